"""The attributes idgate writes on spans, from what it decided (never from a token, and from claims only
as configured): the caller as a keyed pseudonym, bounded roles, the request's HTTP semantic-convention
attributes.  Pure; an identity's attributes are computed once and reused (the verifier keeps identities)."""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Mapping

from proxy.core import caps
from proxy.core.model import AccessRequest

Attributes = Mapping[str, str | bool | int | float | tuple[str, ...]]

# OpenTelemetry's HTTP conventions: any other method is reported as _OTHER (a client picks the method).
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
PSEUDONYM_HEX = 32                 # 128 bits of HMAC-SHA256: unlinkable without the key, collision-free in practice
_IDENTITY_CACHE = 4096


def http_method(method: str) -> str:
    return method if method in _KNOWN_METHODS else "_OTHER"


def request_attributes(access: AccessRequest) -> dict[str, str]:
    """The admitted request: path and host as decided (normalized, capped as in the audit), never the query."""
    return {"http.request.method": http_method(access.method), "url.path": access.path[:caps.PATH],
            "server.address": access.host[:caps.HOST],
            "client.address": access.client_addr[:caps.CLIENT_ADDR], "idgate.request_id": access.request_id}


class IdentityAttributes:
    """`enduser.pseudo.id` = HMAC-SHA256(key, issuer NUL subject): the same caller gets the same pseudonym for
    as long as the key is kept, and nobody without it can tell who it is or test a guess.  `enduser.id` (the
    subject) only with `export_subject`.  `user.roles`: the first `max_roles` groups, each cut to 128
    characters (0: none)."""

    def __init__(self, key: bytes, *, export_subject: bool, max_roles: int) -> None:
        self._key = key
        self._export_subject = export_subject
        self._max_roles = max_roles
        self.of = functools.lru_cache(maxsize=_IDENTITY_CACHE)(self._compute)

    def _compute(self, issuer: str, subject: str, groups: tuple[str, ...]) -> Attributes:
        message = issuer.encode("utf-8", "surrogatepass") + b"\0" + subject.encode("utf-8", "surrogatepass")
        found: dict[str, str | tuple[str, ...]] = {
            "enduser.pseudo.id": hmac.new(self._key, message, hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]}
        if self._export_subject:
            found["enduser.id"] = subject[:caps.CLAIM]
        if self._max_roles and groups:
            found["user.roles"] = tuple(group[:caps.GROUP] for group in groups[:self._max_roles])
        return found
