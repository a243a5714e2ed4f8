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


def _one(headers: Sequence[tuple[str, str]], *names: str) -> str | None:
    """The value of the first of `names` present, refusing duplicates and conflicting sources."""
    found = [value for name, value in headers if name.lower() in names]
    if not found:
        return None
    if len(set(found)) != 1:
        raise BadRequest(f"conflicting {'/'.join(names)} headers", reason=Reason.AMBIGUOUS_ORIGINAL_REQUEST)
    return found[0]


def original_request(subrequest: Received) -> Received:
    """The request the fronting proxy asks about, from the headers it set (believed from a trusted peer only)."""
    headers = subrequest.headers
    method = _one(headers, "x-original-method", "x-forwarded-method")
    uri = _one(headers, "x-original-uri", "x-forwarded-uri")
    forwarded_host = _one(headers, "x-forwarded-host")
    if method is None or uri is None:
        raise BadRequest("the original method and URI are required", reason=Reason.MISSING_ORIGINAL_REQUEST)
    return Received(request_id=subrequest.request_id, peer=subrequest.peer, client_addr=subrequest.client_addr,
                    method=method, hosts=(forwarded_host,) if forwarded_host is not None else subrequest.hosts,
                    target=uri, headers=headers)


async def handle(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    admitted = await admit(services, GATE, received(request), original_request)
    access = admitted.access
    decision = await services.pipeline.authorize(access, admitted.token)
    response = web.Response(status=200)
    for name, value in identity_headers(services, decision, audience(SURFACE, access.host)):
        response.headers[name] = value
    return response
