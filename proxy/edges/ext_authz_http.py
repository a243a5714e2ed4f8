"""Envoy HTTP ext_authz surface: Envoy sends the original method and `path_prefix` + original path and
query; an exact 200 with identity headers allows, anything else is the audited denial Envoy relays."""

from __future__ import annotations

import functools

from aiohttp import web

from proxy.core.errors import BadRequest
from proxy.core.model import Surface
from proxy.core.reasons import Reason
from proxy.edges import _ext_authz
from proxy.edges._admission import Gate, Received
from proxy.edges._http import received
from proxy.services import SERVICES

SURFACE = Surface.EXT_AUTHZ_HTTP
GATE = Gate(SURFACE, trusted_peers_only=True, forwarded_by_peer=True)
# Envoy's http_service reads this response header as the list of headers to strip upstream.
REMOVE_HEADER = "x-envoy-auth-headers-to-remove"


def original_request(path_prefix: str, check: Received) -> Received:
    """The request Envoy asks about: its target after the prefix, the client address Envoy saw."""
    target = check.target[len(path_prefix):]
    if not check.target.startswith(path_prefix) or not target.startswith("/"):
        raise BadRequest("the check path must be path_prefix + the original path", reason=Reason.NOT_ORIGIN_FORM)
    return check._replace(target=target,
                          client_addr=_ext_authz.envoy_client_addr(check.headers) or check.peer)


async def handle(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    http = services.config.ext_authz.http
    assert http is not None, "the route exists only when the surface is configured"
    allowed = await _ext_authz.authorize(services, GATE, received(request),
                                         functools.partial(original_request, http.path_prefix))
    response = web.Response(status=200)
    for name, value in allowed.set_headers:
        response.headers[name] = value
    response.headers[REMOVE_HEADER] = ",".join(allowed.remove_headers)
    return response
