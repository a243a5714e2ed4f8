"""What the aiohttp-based surfaces share: request-scoped keys, the caller's address and host,
and the identity headers idgate adds to an allowed request."""

from __future__ import annotations

import re
from urllib.parse import quote

from aiohttp import web

from proxy.errors import BadRequest
from proxy.headers import groups_header
from proxy.model import Decision, Surface
from proxy.pipeline import RejectedTarget
from proxy.runtime import Services

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
        raise BadRequest("invalid Host header", reason="bad_host")
    return match.group("name")


def request_host(request: web.BaseRequest) -> str:
    """The single Host header: never the authority of an absolute-form request line (DESIGN §10)."""
    values = request.headers.getall("Host", [])
    if len(values) != 1:
        raise BadRequest("exactly one Host header is required", reason="bad_host")
    return parse_host(values[0])


def rejected_target(request: web.BaseRequest) -> RejectedTarget:
    """Best-effort description of a request refused before it became an AccessRequest."""
    hosts = request.headers.getall("Host", [])
    return RejectedTarget(
        surface=request.get(SURFACE, Surface.PROXY),
        request_id=request.get(REQUEST_ID, ""),
        client_addr=client_addr(request),
        method=request.method,
        host=hosts[0] if len(hosts) == 1 else "",
        raw_path=request.raw_path,
    )


def header_safe(value: str) -> str:
    """Percent-encode anything outside printable ASCII so a claim can never split or smuggle a header."""
    if value.isascii() and value.isprintable():
        return value
    return quote(value, safe="".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%"))


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
