"""What the aiohttp-based surfaces share: request-scoped keys, the caller's address and host,
and the identity headers idgate adds to an allowed request."""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import quote

from aiohttp import web

from proxy.core.errors import BadRequest
from proxy.core.headers import groups_header
from proxy.core.model import Decision, Surface
from proxy.core.reasons import Reason
from proxy.oidc import bearer_token
from proxy.pipeline import RejectedTarget
from proxy.services import Services

REQUEST_ID: web.RequestKey[str] = web.RequestKey("idgate_request_id", str)
SURFACE: web.RequestKey[Surface] = web.RequestKey("idgate_surface", Surface)
# Set once the response head is on the wire: from then on an error can only abort the connection.
RESPONSE_STARTED: web.RequestKey[bool] = web.RequestKey("idgate_response_started", bool)

_HOST = re.compile(r"(?P<name>[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?|\[[0-9a-f:.]{2,45}\])(?::(?P<port>[0-9]{1,5}))?")


def client_addr(request: web.BaseRequest) -> str:
    """The TCP peer: never a header (forwarding headers are only believed from trusted proxies)."""
    return request.remote or "unknown"


def parse_host(value: str) -> str:
    """A Host header value → lower-case host without port, or BadRequest."""
    match = _HOST.fullmatch(value.strip().lower().rstrip("."))
    if match is None:
        raise BadRequest("invalid Host header", reason=Reason.BAD_HOST)
    return match.group("name")


def request_host(request: web.BaseRequest) -> str:
    """The single Host header: never the authority of an absolute-form request line (DESIGN §10)."""
    values = request.headers.getall("Host", [])
    if len(values) != 1:
        raise BadRequest("exactly one Host header is required", reason=Reason.BAD_HOST)
    return parse_host(values[0])


# What a surface says the refused request was about, when that is not this HTTP request itself
# (forward auth and ext_authz ask about someone else's request): (method, host, raw path).
class OriginalTarget(NamedTuple):
    method: str
    host: str
    target: str


ORIGINAL_TARGET: web.RequestKey[OriginalTarget] = web.RequestKey("idgate_original_target", OriginalTarget)


def rejected_target(request: web.BaseRequest) -> RejectedTarget:
    """Best-effort description of a request refused before it became an AccessRequest.  The query
    is left out, as in every other audit record: it may carry secrets (access_token=...)."""
    original = request.get(ORIGINAL_TARGET)
    if original is not None:
        method, host, target = original
    else:
        hosts = request.headers.getall("Host", [])
        method, host, target = request.method, hosts[0] if len(hosts) == 1 else "", request.raw_path
    return RejectedTarget(
        surface=request.get(SURFACE, Surface.PROXY),
        request_id=request.get(REQUEST_ID, ""),
        client_addr=client_addr(request),
        method=method,
        host=host,
        raw_path=target.split("?", 1)[0],
    )


def authorization_token(request: web.BaseRequest) -> str | None:
    """The bearer token, refusing more than one Authorization header: idgate would verify one and an
    upstream might read another."""
    values = request.headers.getall("Authorization", [])
    if len(values) > 1:
        raise BadRequest("more than one Authorization header", reason=Reason.DUPLICATE_AUTHORIZATION)
    return bearer_token(values[0] if values else None)


_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def header_safe(value: str) -> str:
    """Percent-encode anything outside printable ASCII (and `%` itself, so the encoding is unambiguous)
    so a claim can never split or smuggle a header."""
    if value.isascii() and value.isprintable() and "%" not in value and " " not in value:
        return value
    return quote(value, safe=_HEADER_SAFE)


def identity_headers(services: Services, decision: Decision, audience: str) -> list[tuple[str, str]]:
    identity = decision.identity
    assert identity is not None, "an allow decision always carries its identity"
    return [
        ("X-Idgate-Subject", header_safe(identity.subject)),
        ("X-Idgate-Issuer", header_safe(identity.issuer)),
        ("X-Idgate-Groups", groups_header(identity.groups)),
        ("X-Idgate-Rule", decision.rule_id or ""),
        ("X-Idgate-Assertion", services.signer.sign(identity, audience)),
    ]
