"""Header hygiene shared by the HTTP surfaces (DESIGN §6): which headers a client may not send,
which never cross a proxy hop, and the request id.  Pure: works on (name, value) pairs."""

from __future__ import annotations

import ipaddress
import itertools
import re
import secrets
from collections.abc import Callable, Iterable, Sequence

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
})

# Headers an upstream may trust as identity: only idgate sets them.
_IDENTITY_EXACT = frozenset({
    "x-forwarded-user", "x-forwarded-email", "x-forwarded-groups", "x-forwarded-preferred-username",
    "x-remote-user", "remote-user",
})
_IDENTITY_PREFIXES = ("x-idgate-", "x-auth-request-")

# Client-address and original-request claims: believed only from configured trusted proxies.
_FORWARDING_EXACT = frozenset({"forwarded", "x-real-ip"})
_FORWARDING_PREFIXES = ("x-forwarded-", "x-original-")

# Trace context (W3C Trace Context and Baggage, AWS X-Ray): from a stranger, it would choose which trace an
# upstream's spans join, or plant baggage that every service downstream reads as fact.  Passed on only from
# peers trusted for it (tracing.trusted_peers; by default, and with tracing off, the trusted proxies).
TRACE_CONTEXT_HEADERS = frozenset({"traceparent", "tracestate", "baggage", "x-amzn-trace-id"})

# Frameworks that honour these would run a different method or path than the one idgate authorized
# (X-Original-URL / X-Rewrite-URL: Zend/Laminas, older Symfony).
OVERRIDE_HEADERS = frozenset({
    "x-http-method-override", "x-http-method", "x-method-override", "x-original-url", "x-rewrite-url",
})

# idgate always writes exactly one of each (never passing a client's on), so an upstream that reads the
# first value sees the host, scheme and address idgate authorized.
REEMITTED_HEADERS = frozenset({"x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "forwarded", "x-request-id"})

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,128}")


def normalized_name(name: str) -> str:
    """Lower-case, `_` treated as `-`: some servers (and CGI) map both to the same variable."""
    return name.lower().replace("_", "-")


def is_identity_header(norm: str) -> bool:
    return norm in _IDENTITY_EXACT or norm.startswith(_IDENTITY_PREFIXES)


def is_forwarding_header(norm: str) -> bool:
    return norm in _FORWARDING_EXACT or norm.startswith(_FORWARDING_PREFIXES)


def connection_listed(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """Header names listed in any `Connection` header: hop-by-hop by declaration (RFC 9110 §7.6.1)."""
    listed: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            listed.update(normalized_name(token.strip()) for token in value.split(",") if token.strip())
    return frozenset(listed)


def cookie_pairs(value: str) -> list[tuple[str, str]]:
    """The (name, value) pairs of one Cookie header, as servers split it (RFC 6265 §5.4, leniently)."""
    pairs = []
    for part in value.split(";"):
        name, sep, val = part.partition("=")
        name = name.strip()
        if sep and name:
            pairs.append((name, val.strip()))
    return pairs


def cookie_values(headers: Iterable[tuple[str, str]], name: str) -> list[str]:
    """Every value sent for the cookie `name`, over all Cookie headers (more than one is suspicious)."""
    return [v for n, value in headers if n.lower() == "cookie" for k, v in cookie_pairs(value) if k == name]


def set_cookie_name(value: str) -> str:
    """The name a server reads back once a browser keeps this Set-Cookie (RFC 6265bis §5.6: the part
    before the first `;`, split at its first `=`, trimmed of spaces and tabs).  A nameless cookie
    (`=a=b`) is sent back as its value alone, which a server then reads as the cookie `a`."""
    pair = value.split(";", 1)[0]
    name, sep, rest = pair.partition("=")
    if not sep:
        return ""                     # sent back without any `=`: no server reads a name from it
    if not name.strip(" \t"):
        name = rest.partition("=")[0]
    return name.strip(" \t")


def without_cookies(value: str, private: Callable[[str], bool]) -> str:
    """A Cookie header without the cookies idgate keeps to itself (compared case-insensitively: an upstream
    framework may be lenient about names)."""
    return "; ".join(f"{k}={v}" for k, v in cookie_pairs(value) if not private(k.lower()))


def clean_request_headers(
    headers: Sequence[tuple[str, str]], *, trusted_peer: bool, keep_authorization: bool,
    trusted_context: bool | None = None, private_cookie: Callable[[str], bool] | None = None,
) -> list[tuple[str, str]]:
    """Headers safe to pass upstream: no hop-by-hop, no client-supplied identity, no forwarding claims
    from an untrusted peer, no trace context from a peer not trusted for it (`trusted_context`, default:
    as `trusted_peer`), none of the headers idgate re-emits (Host, X-Forwarded-For/-Host/-Proto,
    Forwarded, X-Request-Id), no credential unless the route keeps it, and none of idgate's own cookies
    (`private_cookie`, given a lower-case name: the session and login cookies never reach an upstream)."""
    if trusted_context is None:
        trusted_context = trusted_peer
    listed = connection_listed(headers)
    kept = []
    for name, value in headers:
        norm = normalized_name(name)
        if norm in HOP_BY_HOP or norm in listed or is_identity_header(norm) or norm in REEMITTED_HEADERS \
                or norm == "host":
            continue
        if not trusted_peer and is_forwarding_header(norm):
            continue
        if not trusted_context and norm in TRACE_CONTEXT_HEADERS:
            continue
        if norm == "authorization" and not keep_authorization:
            continue
        if norm == "expect":  # aiohttp already answered 100-continue to the client
            continue
        if private_cookie is not None and norm == "cookie":
            value = without_cookies(value, private_cookie)
            if not value:
                continue
        kept.append((name, value))
    return kept


def clean_response_headers(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    listed = connection_listed(headers)
    return [(n, v) for n, v in headers if normalized_name(n) not in HOP_BY_HOP and normalized_name(n) not in listed]


# Minted ids: a random per-process prefix and a counter.  Unique across processes and restarts, and
# ~20x cheaper than uuid4 (no urandom syscall per request); ids need not be unguessable.
_ID_PREFIX = secrets.token_hex(10)
_id_counter = itertools.count(1)


def request_id(supplied: str | None, *, trusted_peer: bool) -> str:
    """Keep a well-formed id from a trusted proxy (so traces join up); otherwise mint one, so a client
    cannot make its audit records collide with someone else's."""
    if trusted_peer and supplied is not None and _REQUEST_ID.fullmatch(supplied):
        return supplied
    return f"{_ID_PREFIX}{next(_id_counter):012x}"


def forwarded_for(values: Sequence[str], peer: str, *, trusted_peer: bool) -> str:
    """One X-Forwarded-For: a trusted proxy's chain (all its headers, in order) plus the peer itself."""
    chain = [part.strip() for value in values for part in value.split(",") if part.strip()] if trusted_peer else []
    return ", ".join([*chain, peer])


class TrustedProxies:
    _CACHE_SIZE = 4096  # peers seen recently; parsing an address costs more than the request's policy

    def __init__(self, cidrs: Iterable[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
        self._seen: dict[str, bool] = {}

    def __contains__(self, addr: str | None) -> bool:
        if not addr or not self._networks:
            return False
        known = self._seen.get(addr)
        if known is None:
            known = self._lookup(addr)
            if len(self._seen) >= self._CACHE_SIZE:
                self._seen.clear()
            self._seen[addr] = known
        return known

    def _lookup(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)


def groups_header(groups: Sequence[str], limit: int = 4096) -> str:
    """Comma-joined groups, cut at a whole group so a huge group list cannot blow an upstream's header limit."""
    out: list[str] = []
    size = 0
    for group in groups:
        if "," in group or any(ord(c) < 0x20 or ord(c) > 0x7E for c in group):
            continue  # not representable in a comma list without ambiguity
        size += len(group) + 1
        if size > limit:
            break
        out.append(group)
    return ",".join(out)
