"""The gateway key ring: the master keys that seal and open the AWS-style credentials idgate vends for its
DynamoDB gateway, and the audit's redaction key, read from $IDGATE_GATEWAY_KEYS or a JSON file.

    {"active": "k2", "keys": {"k2": "<base64 of >= 32 random bytes>", "k1": "<base64>"},
     "redaction_key": "<base64 of >= 32 random bytes>"}            (redaction_key is optional)

The active key seals new credentials; every key in the ring opens them, so every replica holding the ring
verifies any replica's credentials without shared state.  Rotation: add a new key and make it active on every
replica, then remove the old one once the longest credential lifetime (12 h) has passed since the switch:
credentials sealed with a key that is no longer in the ring are refused (unknown_gateway_key).

Each master key is never used directly: HKDF-SHA256 derives from it one key for AES-GCM sealing and an
independent one for the HMAC that derives secret access keys.  No message here ever shows key material.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import logging
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proxy.config.schema import ENV_GATEWAY_KEYS
from proxy.core.errors import ConfigError, ConfigProblem

log = logging.getLogger("idgate.aws.gateway_keys")

KEY_ID = re.compile(r"[A-Za-z0-9]{1,16}")
MIN_KEY_BYTES = 32
NEW_KEY_BYTES = 32
MAX_RING_CHARS = 64 * 1024          # a ring of hundreds of keys; bounds what a typo'd path can make us read
SEAL_INFO = b"idgate gateway seal v1"
SECRET_INFO = b"idgate gateway secret v1"
REDACTION_INFO = b"idgate audit redaction v1"
_FIELDS = ("active", "keys", "redaction_key")
_SHOWN_NAME = re.compile(r"[a-z_]{1,32}")   # an unknown name is echoed only when it cannot be key material


@dataclass(frozen=True, slots=True)
class GatewayKey:
    """One master key of the ring, as the two keys derived from it."""

    key_id: str
    seal_key: bytes = field(repr=False)
    secret_key: bytes = field(repr=False)
    # Built once per key rather than per DynamoDB call (the AES key schedule is the costly part).
    aead: AESGCM = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "aead", AESGCM(self.seal_key))


@dataclass(frozen=True, slots=True)
class KeyRing:
    active: GatewayKey
    keys: Mapping[str, GatewayKey]           # every key, the active one included
    redaction_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.keys.get(self.active.key_id) is not self.active:
            raise ValueError("the active gateway key must be one of the ring's keys")
        if any(key_id != key.key_id for key_id, key in self.keys.items()):
            raise ValueError("each gateway key must be filed under its own key id")
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))


def _hkdf(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


def derive_gateway_key(key_id: str, master: bytes) -> GatewayKey:
    """The sealing and secret-deriving keys of one master key (independent: distinct HKDF infos)."""
    return GatewayKey(key_id, _hkdf(master, SEAL_INFO), _hkdf(master, SECRET_INFO))


def _line_of(text: str, name: str) -> int | None:
    """The line where `"name":` first appears: a best effort (json keeps no positions), good enough to
    point a human at the right entry of a small file."""
    match = re.search(r'"' + re.escape(name) + r'"\s*:', text)
    return text.count("\n", 0, match.start()) + 1 if match else None


def _decode_key(value: object, what: str) -> tuple[bytes | None, str | None]:
    """(key bytes, None) or (None, why not): the why names `what`, never the value."""
    if not isinstance(value, str):
        return None, f"{what} must be a base64 string"
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None, f"{what} is not valid base64"
    if len(raw) < MIN_KEY_BYTES:
        return None, f"{what} has {len(raw)} bytes; at least {MIN_KEY_BYTES} random bytes are needed"
    return raw, None


def parse_key_ring(text: str, source: str) -> KeyRing:
    """Decode and validate a key ring, reporting every problem at once (ConfigError)."""
    if len(text) > MAX_RING_CHARS:
        raise ConfigError([ConfigProblem(source, None, f"key ring is larger than {MAX_RING_CHARS} characters")])
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for name, value in items:
            if name in seen:
                duplicates.append(name)
            seen[name] = value
        return seen

    try:
        doc = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        # exc.msg is the parser's complaint only ("Expecting value"), never the document's text.
        raise ConfigError([ConfigProblem(source, exc.lineno, f"JSON syntax error: {exc.msg}")]) from exc
    except RecursionError as exc:
        raise ConfigError([ConfigProblem(source, None, "JSON is nested too deeply")]) from exc
    if not isinstance(doc, dict):
        raise ConfigError([ConfigProblem(source, 1, 'key ring must be a JSON object with "active" and "keys"')])

    problems: list[ConfigProblem] = []

    def problem(message: str, name: str | None = None) -> None:
        problems.append(ConfigProblem(source, _line_of(text, name) if name else None, message))

    for name in duplicates:
        shown = repr(name) if KEY_ID.fullmatch(name) or name in _FIELDS else "a name"
        problem(f"{shown} appears more than once", name)
    for name in doc:
        if name not in _FIELDS:
            problem(f"unknown key {name!r}" if _SHOWN_NAME.fullmatch(name) else "an unknown key", name)

    keys: dict[str, GatewayKey] = {}
    seen_masters: dict[bytes, str] = {}
    raw_keys = doc.get("keys")
    if raw_keys is None:
        problem('"keys" is missing')
    elif not isinstance(raw_keys, dict):
        problem('"keys" must be an object of key id to base64 key', "keys")
    elif not raw_keys:
        problem('"keys" must hold at least one key', "keys")
    else:
        for key_id, value in raw_keys.items():
            if not KEY_ID.fullmatch(key_id):
                problem("key ids must be 1 to 16 letters or digits (one is not; it is not shown)")
                continue
            master, why = _decode_key(value, f"key {key_id!r}")
            if master is None:
                problem(why or "", key_id)
                continue
            if master in seen_masters:
                problem(f"key {key_id!r} is the same key as {seen_masters[master]!r}", key_id)
            seen_masters[master] = key_id
            keys[key_id] = derive_gateway_key(key_id, master)

    active = doc.get("active")
    if active is None:
        problem('"active" is missing: it names the key that seals new credentials')
    elif not isinstance(active, str) or not KEY_ID.fullmatch(active):
        problem('"active" must be a key id (1 to 16 letters or digits)', "active")
    elif isinstance(raw_keys, dict) and active not in raw_keys:
        problem(f'"active" names {active!r}, which is not in "keys"', "active")

    redaction_key: bytes | None = None
    if "redaction_key" in doc:
        raw, why = _decode_key(doc["redaction_key"], '"redaction_key"')
        if raw is None:
            problem(why or "", "redaction_key")
        else:
            redaction_key = _hkdf(raw, REDACTION_INFO)

    if problems or not isinstance(active, str) or active not in keys:
        raise ConfigError(problems or [ConfigProblem(source, None, "invalid key ring")])
    return KeyRing(active=keys[active], keys=keys, redaction_key=redaction_key)


def load_key_ring(path: Path | None, environ: Mapping[str, str], *, env: str = ENV_GATEWAY_KEYS,
                  what: str = "gateway") -> KeyRing:
    """The ring from $`env` when it is set (even to nothing: a secret that templating emptied must not fall
    back quietly to a stale file), else from the file at `path`.  The session key ring (`what` = session,
    proxy.sessions) has this format too; its users derive their own keys from the ring's."""
    if env in environ:
        return parse_key_ring(environ[env], f"${env}")
    if path is None:
        raise ConfigError([ConfigProblem(
            f"{what} keys", None, f"no {what} key ring: set ${env} or configure a {what} key file")])
    name = str(path)
    try:
        # O_NONBLOCK: a FIFO must not hang startup; the checks below are on the opened fd, not the name.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise OSError(errno.EINVAL, "not a regular file")
            data = f.read(MAX_RING_CHARS + 1)
    except OSError as exc:
        raise ConfigError([ConfigProblem(name, None, f"cannot read: {exc.strerror}")]) from exc
    if len(data) > MAX_RING_CHARS:
        raise ConfigError([ConfigProblem(name, None, f"file is larger than {MAX_RING_CHARS} bytes")])
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s key file %s is open to group or others (mode %03o): it holds secret keys; "
                    "chmod 600 it", what, name, stat.S_IMODE(mode))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem(name, None, "file is not valid UTF-8")]) from exc
    return parse_key_ring(text, name)


def new_key_ring_text(key_id: str = "k1", *, random: Callable[[int], bytes] = os.urandom) -> str:
    """A fresh ring of one active key and a redaction key, as the JSON `idgate gateway-keys` prints."""
    if not KEY_ID.fullmatch(key_id):
        raise ValueError("a gateway key id is 1 to 16 letters or digits")
    master, redaction = random(NEW_KEY_BYTES), random(NEW_KEY_BYTES)
    if len(master) != NEW_KEY_BYTES or len(redaction) != NEW_KEY_BYTES:
        raise ValueError(f"random() must return {NEW_KEY_BYTES} bytes")
    text = json.dumps({
        "active": key_id,
        "keys": {key_id: base64.b64encode(master).decode()},
        "redaction_key": base64.b64encode(redaction).decode(),
    }, indent=2) + "\n"
    parse_key_ring(text, "<new key ring>")   # what we print must load
    return text
