"""What the aiohttp-based surfaces share: request-scoped keys, the caller's address, the request as
admission receives it, and the identity headers idgate adds to an allowed request."""

from __future__ import annotations

import functools
from urllib.parse import quote

from aiohttp import HttpVersion11, web

from proxy.core.headers import groups_header
from proxy.core.model import Decision, Surface
from proxy.edges._admission import Received, rejected
from proxy.pipeline import RejectedTarget
from proxy.services import Services

REQUEST_ID: web.RequestKey[str] = web.RequestKey("idgate_request_id", str)
REQUEST_SURFACE: web.RequestKey[Surface] = web.RequestKey("idgate_surface", Surface)
# Set once the response head is on the wire: from then on an error can only abort the connection.
RESPONSE_STARTED: web.RequestKey[bool] = web.RequestKey("idgate_response_started", bool)

def client_addr(request: web.BaseRequest) -> str:
    """The TCP peer: never a header (forwarding headers are only believed from trusted proxies)."""
    return request.remote or "unknown"


def received(request: web.BaseRequest) -> Received:
    """An aiohttp request as admission sees it: the Host values from the headers, never the authority of
    an absolute-form request line (DESIGN §10)."""
    peer = client_addr(request)
    return Received(request_id=request[REQUEST_ID], peer=peer, client_addr=peer, method=request.method,
                    hosts=request.headers.getall("Host", []), target=request.raw_path,
                    headers=list(request.headers.items()))


def rejected_target(request: web.BaseRequest) -> RejectedTarget:
    """A request refused outside admission (no route, a bad WebSocket handshake, a target aiohttp's router
    refused), described as it was received."""
    return rejected(request.get(REQUEST_SURFACE, Surface.PROXY), received(request))


async def continue_if_expected(request: web.BaseRequest) -> None:
    """For a surface about to read an allowed request's body: the `100 Continue` the client waits for
    (sent only now, so an unauthenticated client is never asked for its body)."""
    if request.version == HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0   # the response itself has not started


_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def header_safe(value: str) -> str:
    """Percent-encode anything outside printable ASCII (and `%` itself, so the encoding is unambiguous)
    so a claim can never split or smuggle a header."""
    if value.isascii() and value.isprintable() and "%" not in value and " " not in value:
        return value
    return quote(value, safe=_HEADER_SAFE)


IDENTITY_HEADER_NAMES = ("X-Idgate-Subject", "X-Idgate-Issuer", "X-Idgate-Groups", "X-Idgate-Rule", "X-Idgate-Assertion")


@functools.lru_cache(maxsize=4096)
def _identity_values(subject: str, issuer: str, groups: tuple[str, ...]) -> tuple[str, str, str]:
    """The header spellings of an identity: the same few identities ask again and again."""
    return header_safe(subject), header_safe(issuer), groups_header(groups)


def identity_headers(services: Services, decision: Decision, audience: str) -> list[tuple[str, str]]:
    identity = decision.identity
    assert identity is not None, "an allow decision always carries its identity"
    values = (*_identity_values(identity.subject, identity.issuer, identity.groups), decision.rule_id or "",
              services.signer.sign(identity, audience))
    return list(zip(IDENTITY_HEADER_NAMES, values))
