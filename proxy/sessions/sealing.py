"""Sealed values of browser login: cookies (the login state, the session) and the tokens a session keeps in
its store, each an AES-256-GCM box bound to what it is (a cookie's name, a session's store key), expiring.

The keys come from the session key ring (the gateway ring's JSON format, $IDGATE_SESSION_KEYS or
login.key_file): the active key seals, every key opens, so replicas sharing the ring open each other's
cookies and a rotation keeps sessions alive.  A value that does not open (tampered, another key, another
name, expired) is simply not there: the caller treats it as an absent cookie.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proxy.aws.gateway_keys import KeyRing, load_key_ring
from proxy.config.schema import ENV_SESSION_KEYS

COOKIE_INFO = b"idgate session cookie v1"
STORED_INFO = b"idgate session stored tokens v1"
NONCE_BYTES = 12
# Browsers keep about 4096 bytes per cookie (name and attributes included): a sealed value that does not
# fit would be dropped silently by the browser, so sealing refuses it here instead.
MAX_COOKIE_VALUE_CHARS = 3800
_VERSION = "v1"


class SealError(ValueError):
    """A value that cannot be sealed (too large for a cookie)."""


@dataclass(frozen=True, slots=True)
class _Key:
    key_id: str
    cookie: AESGCM = field(repr=False)
    stored: AESGCM = field(repr=False)


def _derive(master: bytes, info: bytes) -> AESGCM:
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master))


class Sealer:
    """Seals and opens JSON objects with the session key ring."""

    def __init__(self, ring: KeyRing, *, clock: Callable[[], float] = time.time,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        # The ring's own keys belong to their first use; these are derived from them (HKDF, distinct infos),
        # so one ring given to both the gateway and the sessions still never reuses a key.
        self._keys = {key_id: _Key(key_id, _derive(key.seal_key, COOKIE_INFO), _derive(key.seal_key, STORED_INFO))
                      for key_id, key in ring.keys.items()}
        self._active = self._keys[ring.active.key_id]
        self._clock = clock
        self._random = random

    def seal_cookie(self, name: str, payload: Mapping[str, Any], expires_at: float) -> str:
        value = self._seal(self._active.key_id, self._active.cookie, _cookie_context(name), payload, expires_at)
        if len(value) > MAX_COOKIE_VALUE_CHARS:
            raise SealError(f"a sealed {name} cookie would take {len(value)} characters (at most "
                            f"{MAX_COOKIE_VALUE_CHARS})")
        return value

    def open_cookie(self, name: str, value: str) -> dict[str, Any] | None:
        return self._open(value, _cookie_context(name), lambda key: key.cookie)

    def seal_stored(self, store_key: str, payload: Mapping[str, Any], expires_at: float) -> str:
        return self._seal(self._active.key_id, self._active.stored, _stored_context(store_key), payload, expires_at)

    def open_stored(self, store_key: str, value: str) -> dict[str, Any] | None:
        return self._open(value, _stored_context(store_key), lambda key: key.stored)

    def _seal(self, key_id: str, aead: AESGCM, context: bytes, payload: Mapping[str, Any], expires_at: float) -> str:
        plain = json.dumps({**payload, "exp": expires_at}, separators=(",", ":")).encode()
        nonce = self._random(NONCE_BYTES)
        box = aead.encrypt(nonce, plain, context + key_id.encode())
        return f"{_VERSION}.{key_id}.{_b64(nonce + box)}"

    def _open(self, value: str, context: bytes, aead_of: Callable[[_Key], AESGCM]) -> dict[str, Any] | None:
        version, _, rest = value.partition(".")
        key_id, _, sealed = rest.partition(".")
        key = self._keys.get(key_id)
        if version != _VERSION or key is None or len(value) > 2 * MAX_COOKIE_VALUE_CHARS:
            return None
        try:
            raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
            if _b64(raw) != sealed:
                # The decoder skips characters it does not know: one spelling per value, so nothing keyed
                # on the cookie string (a cache, a log search) sees many values where there is one.
                return None
            plain = aead_of(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context + key_id.encode())
            payload = json.loads(plain)
        except (binascii.Error, ValueError, InvalidTag):
            return None
        if not isinstance(payload, dict):
            return None
        opened: dict[str, Any] = payload
        exp = opened.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float) or self._clock() >= exp:
            return None
        return opened


def _cookie_context(name: str) -> bytes:
    # Bound to the name: a login-state value replayed as the session cookie (or under another login's
    # name) does not open.
    return b"cookie\0" + name.encode() + b"\0"


def _stored_context(store_key: str) -> bytes:
    # Bound to the session: tokens copied from one stored session into another do not open there.
    return b"stored\0" + store_key.encode() + b"\0"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def load_sealer(key_file: Path | None, environ: Mapping[str, str], *,
                clock: Callable[[], float] = time.time) -> Sealer:
    """The Sealer of login.key_file, or of $IDGATE_SESSION_KEYS when it is set (ConfigError otherwise)."""
    return Sealer(load_key_ring(key_file, environ, env=ENV_SESSION_KEYS, what="session"), clock=clock)
