"""Forward-auth surface for nginx `auth_request` (X-Original-URI/-Method) and Traefik forwardAuth
(X-Forwarded-Method/-Uri/-Host): 200 with identity headers, or the audited 401/403."""

from __future__ import annotations

import re

from aiohttp import web

from proxy.core.reasons import Reason
from proxy.edges._http import (
    ORIGINAL_TARGET, REQUEST_ID, OriginalTarget, SURFACE, authorization_token, client_addr, identity_headers, parse_host, request_host,
)
from proxy.core.errors import AccessDenied, BadRequest
from proxy.core.model import AccessRequest, Surface
from proxy.core.paths import normalize_path, split_target
from proxy.services import SERVICES

_METHOD = re.compile(r"[A-Z]{1,16}")


def _one(request: web.Request, *names: str) -> str | None:
    """The value of the first of `names` present, refusing duplicates and conflicting sources."""
    found = [v for name in names for v in request.headers.getall(name, [])]
    if not found:
        return None
    if len(set(found)) != 1:
        raise BadRequest(f"conflicting {'/'.join(names)} headers", reason=Reason.AMBIGUOUS_ORIGINAL_REQUEST)
    return found[0]


async def handle(request: web.Request) -> web.Response:
    request[SURFACE] = Surface.FORWARD_AUTH
    services = request.app[SERVICES]
    peer = client_addr(request)
    if peer not in services.trusted:
        # The original-request headers are claims about someone else's request: only a configured
        # proxy may make them.
        raise AccessDenied("forward-auth answers trusted proxies only", reason=Reason.UNTRUSTED_PEER)
    method = _one(request, "X-Original-Method", "X-Forwarded-Method")
    uri = _one(request, "X-Original-URI", "X-Forwarded-Uri")
    forwarded_host = _one(request, "X-Forwarded-Host")
    # From here on a refusal is about the original request, and is audited as such.
    request[ORIGINAL_TARGET] = OriginalTarget(method or "", forwarded_host or request.headers.get("Host") or "", uri or "")
    if method is None or uri is None:
        raise BadRequest("the original method and URI are required", reason=Reason.MISSING_ORIGINAL_REQUEST)
    if not _METHOD.fullmatch(method):
        raise BadRequest("invalid original method", reason=Reason.BAD_METHOD)
    host = parse_host(forwarded_host) if forwarded_host is not None else request_host(request)
    raw_path, _query = split_target(uri)
    access = AccessRequest(
        surface=Surface.FORWARD_AUTH, request_id=request[REQUEST_ID], method=method, host=host,
        path=normalize_path(raw_path), client_addr=peer,
    )
    decision = await services.pipeline.authorize(access, authorization_token(request))
    response = web.Response(status=200)
    for name, value in identity_headers(services, decision, host):
        response.headers[name] = value
    response.headers["X-Idgate-Path"] = access.path
    return response
