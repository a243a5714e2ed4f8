"""Forward-auth surface for nginx `auth_request` (X-Original-URI/-Method) and Traefik forwardAuth
(X-Forwarded-Method/-Uri/-Host): 200 with identity headers, or the audited 401/403.

The fronting proxy forwards its own copy of the request, so idgate decides on exactly the target it
was shown (a target that is not canonical is refused), and the assertion it mints vouches for that one
host: the fronting proxy must pin the host it asks about (deploy/nginx, deploy/traefik)."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from proxy.assertion import audience
from proxy.core.errors import BadRequest
from proxy.core.model import Surface
from proxy.core.reasons import Reason
from proxy.edges._admission import Gate, Received, admit
from proxy.edges._http import identity_headers, received
from proxy.services import SERVICES

SURFACE = Surface.FORWARD_AUTH
GATE = Gate(SURFACE, trusted_peers_only=True, forwarded_by_peer=True)


_ORIGINAL_HEADERS = {
    "x-original-method": "method", "x-forwarded-method": "method",
    "x-original-uri": "uri", "x-forwarded-uri": "uri",
    "x-forwarded-host": "host",
}
_NAMES = {"method": "X-Original-Method/X-Forwarded-Method", "uri": "X-Original-URI/X-Forwarded-Uri",
          "host": "X-Forwarded-Host"}


def _original_headers(headers: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The original request's method, URI and host from one pass over the head, refusing duplicates and
    conflicting sources (nginx's X-Original-* beside Traefik's X-Forwarded-* that disagree)."""
    found: dict[str, str] = {}
    for name, value in headers:
        part = _ORIGINAL_HEADERS.get(name.lower())
        if part is None:
            continue
        if found.setdefault(part, value) != value:
            raise BadRequest(f"conflicting {_NAMES[part]} headers", reason=Reason.AMBIGUOUS_ORIGINAL_REQUEST)
    return found


def original_request(subrequest: Received) -> Received:
    """The request the fronting proxy asks about, from the headers it set (believed from a trusted peer only)."""
    found = _original_headers(subrequest.headers)
    method, uri, forwarded_host = found.get("method"), found.get("uri"), found.get("host")
    if method is None or uri is None:
        raise BadRequest("the original method and URI are required", reason=Reason.MISSING_ORIGINAL_REQUEST)
    return subrequest._replace(method=method, hosts=(forwarded_host,) if forwarded_host is not None else subrequest.hosts,
                               target=uri)


async def handle(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    admitted = await admit(services, GATE, received(request), original_request)
    access = admitted.access
    decision = await services.pipeline.authorize(access, admitted.token)
    response = web.Response(status=200)
    for name, value in identity_headers(services, decision, audience(SURFACE, access.host)):
        response.headers[name] = value
    return response
