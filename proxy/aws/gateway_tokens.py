"""The credentials the DynamoDB gateway vends: the session token is an AES-GCM sealing of the session (who,
which role, which scope, until when, under which key) bound to its access key id, and the secret access key
is derived from both, so any replica holding the key ring verifies a request without shared state.

    access key id   IDG<key id>_<16 random base32 chars>                          (21..36 characters)
    session token   base64url(0x01 || 12-byte nonce || AES-GCM(seal key, JSON session, aad=access key id))
    secret          base64(HMAC-SHA256(secret key, label || access key id || 0 || token)[:30])   (40 chars)
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cachetools import LRUCache
from cryptography.exceptions import InvalidTag

from proxy.aws.credentials import AwsCredentials
from proxy.aws.gateway_keys import GatewayKey, KeyRing
from proxy.core.errors import AccessDenied, AuthenticationError
from proxy.core.reasons import Reason

MAX_SESSION_TOKEN_CHARS = 4096      # fits any HTTP header limit with room for the rest of the head
TOKEN_VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
ACCESS_KEY_RANDOM_BYTES = 10        # 80 bits: 16 base32 characters, no padding
SESSION_CACHE_SIZE = 4096
SECRET_LABEL = b"idgate gateway secret\x00"
_VERSION_BYTE = bytes([TOKEN_VERSION])
_MIN_TOKEN_BYTES = 1 + NONCE_BYTES + TAG_BYTES
_ACCESS_KEY_ID = re.compile(r"IDG([A-Za-z0-9]{1,16})_[A-Z2-7]{16}")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_FIELDS = frozenset("vkiscgmrudte")

# Fixed messages: a client learns the reason code and nothing about which check failed or what was sealed.
_INVALID = "invalid gateway credentials"
_UNKNOWN_KEY = "gateway credentials sealed with a key this idgate does not hold"
_EXPIRED = "gateway credentials have expired"


@dataclass(frozen=True, slots=True)
class GatewaySession:
    issuer: str
    subject: str
    client_id: str | None
    groups: tuple[str, ...]          # only the groups the policy reads (the caller filters)
    claims: Mapping[str, Any]        # only the claims the policy reads (JSON values; caller filters)
    role_arn: str
    rule_ids: tuple[str, ...]
    scope_sha256: str                # hex digest of the scope the credentials were issued for
    issued_at: int                   # epoch seconds
    expires_at: int
    key_id: str = ""                 # filled in by open_session


def _seal_fields(session: GatewaySession, key_id: str) -> dict[str, Any]:
    return {"v": TOKEN_VERSION, "k": key_id, "i": session.issuer, "s": session.subject, "c": session.client_id,
            "g": list(session.groups), "m": dict(session.claims), "r": session.role_arn,
            "u": list(session.rule_ids), "d": session.scope_sha256, "t": session.issued_at,
            "e": session.expires_at}


def _is_strings(value: object) -> bool:
    return type(value) is list and all(type(item) is str for item in value)


def _session_from_fields(fields: object, key_id: str) -> GatewaySession | None:
    """The session the fields describe, or None when any field is missing, extra or of the wrong type.
    `type(x) is` rather than isinstance: JSON decodes to exact types, and True must not pass for an int."""
    if type(fields) is not dict or fields.keys() != _FIELDS:
        return None
    f = fields
    if (type(f["v"]) is not int or f["v"] != TOKEN_VERSION or f["k"] != key_id
            or type(f["i"]) is not str or type(f["s"]) is not str or type(f["r"]) is not str
            or not (f["c"] is None or type(f["c"]) is str) or type(f["m"]) is not dict
            or not _is_strings(f["g"]) or not _is_strings(f["u"])
            or type(f["d"]) is not str or not _HEX_SHA256.fullmatch(f["d"])
            or type(f["t"]) is not int or type(f["e"]) is not int):
        return None
    return GatewaySession(issuer=f["i"], subject=f["s"], client_id=f["c"], groups=tuple(f["g"]),
                          claims=MappingProxyType(f["m"]),      # cached sessions are shared: read-only
                          role_arn=f["r"], rule_ids=tuple(f["u"]), scope_sha256=f["d"], issued_at=f["t"],
                          expires_at=f["e"], key_id=key_id)


def derive_secret(key: GatewayKey, access_key_id: str, session_token: str) -> str:
    """The secret access key of (access key id, token): deterministic, so a verifier recomputes it."""
    mac = hmac.digest(key.secret_key,
                      SECRET_LABEL + access_key_id.encode() + b"\x00" + session_token.encode(), "sha256")
    return base64.b64encode(mac[:30]).decode()


def issue(ring: KeyRing, session: GatewaySession, *, random: Callable[[int], bytes] = os.urandom) -> AwsCredentials:
    """Seal `session` with the ring's active key into a fresh access key id, token and secret."""
    key = ring.active
    # ASCII escapes: a claim holding a lone surrogate (valid JSON in a JWT) must not break the encoding.
    plaintext = json.dumps(_seal_fields(session, key.key_id), separators=(",", ":"), allow_nan=False).encode()
    # The same check open_session makes: credentials that could never open are a caller's bug, found here.
    if _session_from_fields(json.loads(plaintext), key.key_id) is None:
        raise ValueError("a gateway session field has the wrong type")
    suffix, nonce = random(ACCESS_KEY_RANDOM_BYTES), random(NONCE_BYTES)
    if len(suffix) != ACCESS_KEY_RANDOM_BYTES or len(nonce) != NONCE_BYTES:
        raise ValueError("random() returned the wrong number of bytes")
    access_key_id = f"IDG{key.key_id}_{base64.b32encode(suffix).decode()}"
    sealed = key.aead.encrypt(nonce, plaintext, access_key_id.encode())
    token = base64.urlsafe_b64encode(_VERSION_BYTE + nonce + sealed).rstrip(b"=").decode()
    if len(token) > MAX_SESSION_TOKEN_CHARS:
        raise AccessDenied("the identity is too large to carry in gateway credentials",
                           reason=Reason.GATEWAY_TOKEN_TOO_LARGE)
    return AwsCredentials(access_key_id=access_key_id, secret_access_key=derive_secret(key, access_key_id, token),
                          session_token=token, expiration=float(session.expires_at))


def open_session(ring: KeyRing, access_key_id: str, session_token: str, now: float) -> tuple[GatewaySession, str]:
    """(the session, the secret access key) of credentials this ring issued, else AuthenticationError."""
    if len(session_token) > MAX_SESSION_TOKEN_CHARS:          # before any decoding: bounded work per request
        raise AuthenticationError(_INVALID, reason=Reason.INVALID_GATEWAY_TOKEN)
    match = _ACCESS_KEY_ID.fullmatch(access_key_id)
    if match is None:
        raise AuthenticationError(_INVALID, reason=Reason.INVALID_GATEWAY_TOKEN)
    key = ring.keys.get(match[1])
    if key is None:
        raise AuthenticationError(_UNKNOWN_KEY, reason=Reason.UNKNOWN_GATEWAY_KEY)
    session = _unseal(key, access_key_id, session_token)
    if session is None:
        raise AuthenticationError(_INVALID, reason=Reason.INVALID_GATEWAY_TOKEN)
    if session.expires_at <= now:
        raise AuthenticationError(_EXPIRED, reason=Reason.GATEWAY_TOKEN_EXPIRED)
    return session, derive_secret(key, access_key_id, session_token)


def _unseal(key: GatewayKey, access_key_id: str, session_token: str) -> GatewaySession | None:
    try:
        raw = base64.urlsafe_b64decode(session_token + "=" * (-len(session_token) % 4))
    except (binascii.Error, ValueError):     # ValueError: non-ASCII text
        return None
    # One spelling per token: the lenient decoder skips foreign characters and ignores the last character's
    # spare bits, and a second string for the same sealed bytes would be a second cache entry and secret.
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != session_token.encode():
        return None
    if len(raw) < _MIN_TOKEN_BYTES or raw[:1] != _VERSION_BYTE:
        return None
    try:
        plaintext = key.aead.decrypt(raw[1:1 + NONCE_BYTES], raw[1 + NONCE_BYTES:], access_key_id.encode())
    except InvalidTag:
        return None
    try:
        fields = json.loads(plaintext)
    except ValueError:
        return None
    return _session_from_fields(fields, key.key_id)


class SessionOpener:
    """open_session behind a bounded LRU of opened sessions, keyed by (access key id, token): a hit skips
    base64, AES-GCM, JSON and the HMAC, never the expiry check.  One opener per ring: a ring reload builds a
    new opener, so a retired key's sessions leave with the old cache.  Not thread-safe (the event loop's)."""

    def __init__(self, ring: KeyRing, *, maxsize: int = SESSION_CACHE_SIZE) -> None:
        self.ring = ring
        self._cache: LRUCache[tuple[str, str], tuple[GatewaySession, str]] = LRUCache(maxsize=maxsize)

    def open(self, access_key_id: str, session_token: str, now: float) -> tuple[GatewaySession, str]:
        cache_key = (access_key_id, session_token)
        opened = self._cache.get(cache_key)
        if opened is None:
            opened = open_session(self.ring, access_key_id, session_token, now)
            self._cache[cache_key] = opened
        elif opened[0].expires_at <= now:
            del self._cache[cache_key]
            raise AuthenticationError(_EXPIRED, reason=Reason.GATEWAY_TOKEN_EXPIRED)
        return opened
