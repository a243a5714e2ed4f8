"""Envoy HTTP ext_authz surface: Envoy sends the original method and `path_prefix` + original path and
query; an exact 200 with identity headers allows, anything else is the audited denial Envoy relays."""

from __future__ import annotations

from aiohttp import web

from proxy.core.reasons import Reason
from proxy.edges import _ext_authz
from proxy.edges._http import ORIGINAL_TARGET, REQUEST_ID, SURFACE, OriginalTarget, client_addr
from proxy.core.errors import AccessDenied, BadRequest
from proxy.core.model import Surface
from proxy.services import SERVICES

# Envoy's http_service reads this response header as the list of headers to strip upstream.
REMOVE_HEADER = "x-envoy-auth-headers-to-remove"


async def handle(request: web.Request) -> web.Response:
    request[SURFACE] = Surface.EXT_AUTHZ_HTTP
    services = request.app[SERVICES]
    peer = client_addr(request)
    if peer not in services.trusted:
        # The request it describes is someone else's, and so are its address headers: only a
        # configured Envoy may ask.
        raise AccessDenied("ext_authz answers trusted proxies only", reason=Reason.UNTRUSTED_PEER)
    http = services.config.ext_authz.http
    assert http is not None, "the route exists only when the surface is configured"
    target = request.raw_path[len(http.path_prefix):]
    hosts = request.headers.getall("Host", [])
    # From here on a refusal is about the original request, and is audited as such.
    request[ORIGINAL_TARGET] = OriginalTarget(request.method, hosts[0] if len(hosts) == 1 else "", target)
    if not request.raw_path.startswith(http.path_prefix) or not target.startswith("/"):
        raise BadRequest("the check path must be path_prefix + the original path", reason=Reason.NOT_ORIGIN_FORM)
    if len(hosts) != 1:
        raise BadRequest("exactly one Host header is required", reason=Reason.BAD_HOST)
    headers = list(request.headers.items())
    check = _ext_authz.EnvoyCheck(
        surface=Surface.EXT_AUTHZ_HTTP, request_id=request[REQUEST_ID], method=request.method,
        authority=hosts[0], target=target, headers=headers,
        client_addr=_ext_authz.envoy_client_addr(headers) or peer,
    )
    allowed = await _ext_authz.authorize(services, check)
    response = web.Response(status=200)
    for name, value in allowed.set_headers:
        response.headers[name] = value
    response.headers[REMOVE_HEADER] = ",".join(allowed.remove_headers)
    return response
