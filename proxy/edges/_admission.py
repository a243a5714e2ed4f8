"""One admission step for every surface: what a surface received (method, target, host, headers, peer,
and whether idgate or another proxy forwards the request) becomes an AccessRequest and the caller's
token, or a refusal that is on the audit log before it is raised.  A fix here fixes every surface.

In order: the trusted-peer gate, the head's limits, method and override headers, one Authorization,
one host, and a target that is canonical where idgate cannot rewrite what is forwarded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple
from urllib.parse import urlsplit

from proxy.config import LimitsConfig
from proxy.core.errors import AccessDenied, BadRequest, ExpectationFailed, HeadersTooLarge, IdgateError
from proxy.core.headers import OVERRIDE_HEADERS, TRACE_CONTEXT_HEADERS, cookie_values, is_identity_header
from proxy.core.hosts import is_loopback, parse_host
from proxy.core.model import AccessRequest, Surface
from proxy.core.paths import normalize_path, split_target
from proxy.core.reasons import Reason
from proxy.oidc import bearer_token
from proxy.pipeline import RejectedTarget, SessionCookie
from proxy.services import Services

_METHOD = re.compile(r"[A-Z]{1,16}")
# A compact JWS as botocore's container provider sends it (no scheme); the verifier checks its shape.
_RAW_TOKEN = re.compile(r"[A-Za-z0-9_.\-]+", re.ASCII)


class TokenForm(Enum):
    BEARER = "bearer"              # `Authorization: Bearer <token>`
    CONTAINER = "container"        # botocore sends its token file verbatim; other clients send Bearer
    SIGV4 = "sigv4"                # AWS's signature: the surface verifies the whole request, not a token


@dataclass(frozen=True, slots=True)
class Gate:
    """What a surface asks of admission: fixed per surface."""

    surface: Surface
    # The request describes someone else's request (forward auth, ext_authz): only a configured proxy
    # may make such claims.
    trusted_peers_only: bool = False
    # Another proxy forwards its own copy of the target, so idgate must decide on exactly that spelling.
    forwarded_by_peer: bool = False
    token_form: TokenForm = TokenForm.BEARER
    methods: frozenset[str] | None = None      # None: any method
    sessions: bool = False                     # a browser's session cookie may stand in for a bearer token


class Received(NamedTuple):
    """What a surface received, before idgate believed any of it."""

    request_id: str
    peer: str                                  # the TCP peer address
    client_addr: str                           # the client as the surface knows it (the peer, or what a trusted Envoy said)
    method: str
    hosts: Sequence[str]                       # every Host / :authority value the request carried
    target: str                                # path and query, as forwarded
    headers: Sequence[tuple[str, str]]         # the request's headers (for ext_authz: the original request's)


class Admitted(NamedTuple):
    access: AccessRequest
    token: str | None
    raw_path: str
    query: str
    identity_headers: tuple[str, ...]          # lower-case names of client-sent identity headers
    context_headers: tuple[str, ...]           # lower-case names of client-sent trace context headers (any spelling)
    session: SessionCookie | None = None       # the session cookie, when the gate takes one and no token came


def rejected(surface: Surface, received: Received) -> RejectedTarget:
    """How a refused request is described in its audit record (never with its query: it may hold secrets)."""
    hosts = received.hosts
    return RejectedTarget(surface=surface, request_id=received.request_id, client_addr=received.client_addr,
                          method=received.method, host=hosts[0] if len(hosts) == 1 else "",
                          raw_path=received.target.split("?", 1)[0])


async def admit(services: Services, gate: Gate, received: Received,
                original: Callable[[Received], Received] | None = None) -> Admitted:
    """The admitted request, or the IdgateError to answer with, already on the audit log.

    A surface that asks about another request (forward auth, ext_authz HTTP) passes `original`, which
    reads that request's description from what was received: it runs only once the peer is trusted,
    and a refusal it raises is audited as the request that was received."""
    try:
        if gate.trusted_peers_only and received.peer not in services.trusted:
            raise AccessDenied(f"{gate.surface.value} answers trusted proxies only", reason=Reason.UNTRUSTED_PEER)
        if original is not None:
            received = original(received)
        admitted = check(gate, received, services.config.limits)
        if gate.sessions and admitted.token is None and services.sessions is not None:
            admitted = admitted._replace(session=_session_cookie(received, services.sessions.config.session_cookie))
    except IdgateError as err:
        raise await services.pipeline.refuse(rejected(gate.surface, received), err) from None
    services.tracing.admitted(admitted.access)
    return admitted


def check(gate: Gate, received: Received, limits: LimitsConfig) -> Admitted:
    """Every admission check but the trusted-peer gate: pure, raising the IdgateError of the first that fails."""
    authorization, identity, context = _scan(received.headers, limits)
    if not _METHOD.fullmatch(received.method):
        raise BadRequest("invalid method", reason=Reason.BAD_METHOD)
    if gate.methods is not None and received.method not in gate.methods:
        raise BadRequest(f"this endpoint answers {', '.join(sorted(gate.methods))} only",
                         reason=Reason.METHOD_NOT_ALLOWED)
    if len(received.hosts) != 1:
        raise BadRequest("exactly one Host header is required", reason=Reason.BAD_HOST)
    host = parse_host(received.hosts[0])
    raw_path, query = split_target(received.target)
    path = normalize_path(raw_path)
    if gate.forwarded_by_peer and path != raw_path:
        # The fronting proxy forwards the target as the client wrote it and idgate cannot rewrite it:
        # allowing would send the upstream a spelling idgate did not decide on (a `..`, `//` or `%2e`
        # the upstream may resolve differently).
        raise BadRequest("the request path is not in canonical form", reason=Reason.NON_CANONICAL_PATH)
    access = AccessRequest(surface=gate.surface, request_id=received.request_id, method=received.method, host=host,
                           path=path, client_addr=received.client_addr)
    return Admitted(access, _token(gate, authorization), raw_path, query, identity, context)


def _scan(headers: Sequence[tuple[str, str]],
          limits: LimitsConfig) -> tuple[str | None, tuple[str, ...], tuple[str, ...]]:
    """One pass over the head: its limits, the override-header refusal, the one Authorization, and the
    identity and trace context headers a client sent (this runs on every request)."""
    if len(headers) > limits.max_headers:
        raise HeadersTooLarge("too many request headers", reason=Reason.TOO_MANY_HEADERS)
    authorization: str | None = None
    identity: list[str] = []
    context: list[str] = []
    for name, value in headers:
        if len(name) + len(value) > limits.max_header_bytes:
            raise HeadersTooLarge("a request header is too large", reason=Reason.HEADER_TOO_LARGE)
        lower = name.lower()
        if lower == "authorization":
            if authorization is not None:
                # idgate would verify one and an upstream might read the other.
                raise BadRequest("more than one Authorization header", reason=Reason.DUPLICATE_AUTHORIZATION)
            authorization = value
            continue
        norm = lower.replace("_", "-")   # some servers (and CGI) read both spellings as one header
        if norm == "expect" and value.strip().lower() != "100-continue":
            raise ExpectationFailed("only Expect: 100-continue is supported", reason=Reason.UNSUPPORTED_EXPECT)
        if norm == "transfer-encoding" and value.strip().lower() != "chunked":
            # idgate re-frames the body itself: a coding it would drop (gzip, chunked) must not pass.
            raise BadRequest("only Transfer-Encoding: chunked is accepted", reason=Reason.UNSUPPORTED_TRANSFER_ENCODING)
        if norm in OVERRIDE_HEADERS:
            raise BadRequest("method or URL override headers are not accepted", reason=Reason.OVERRIDE_HEADER)
        if is_identity_header(norm):
            identity.append(lower)
        elif norm in TRACE_CONTEXT_HEADERS:
            context.append(lower)
    return authorization, tuple(identity), tuple(context)


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _session_cookie(received: Received, name: str) -> SessionCookie | None:
    values = cookie_values(received.headers, name)
    if not values:
        return None
    # Sent twice, a cookie is ambiguous (which one would an upstream or a framework read?): neither counts.
    changes = received.method not in SAFE_METHODS or any(
        name.lower() == "upgrade" for name, _ in received.headers)
    return SessionCookie(values[0] if len(values) == 1 else "",
                         changes and is_cross_site(received.headers, received.hosts[0]))


def is_cross_site(headers: Iterable[tuple[str, str]], host: str) -> bool:
    """Whether a browser request was made by another site (Fetch Metadata, else Origin): what decides if a
    state-changing request that only the session cookie authenticates may go through (CSRF).  A request
    that says nothing either way counts as cross-site: every browser that keeps cookies sends Origin on
    a POST."""
    site = origin = None
    for name, value in headers:
        lower = name.lower()
        if lower == "sec-fetch-site":
            site = value.strip().lower()
        elif lower == "origin":
            origin = value.strip()
    if site is not None:
        # same-site (a sibling subdomain) is still another origin, which may be less trusted than this one.
        return site not in ("same-origin", "none")
    if origin is None or origin == "null":
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("https", "http") or parts.path or parts.query:
        return True
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        return True      # the session cookie is Secure: only a loopback test setup serves it over http
    return parts.netloc.lower() != host.strip().lower()


def _token(gate: Gate, authorization: str | None) -> str | None:
    if gate.token_form is TokenForm.SIGV4:
        return None
    if gate.token_form is TokenForm.CONTAINER and authorization is not None and " " not in authorization:
        if not _RAW_TOKEN.fullmatch(authorization):
            raise BadRequest("malformed Authorization header", reason=Reason.MALFORMED_AUTHORIZATION)
        return authorization
    return bearer_token(authorization)
