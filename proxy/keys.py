"""EC P-256 signing keys as idgate uses them (X-Idgate-Assertion, audit anchors): loaded from PEM with
a clear error, and published as a JWK whose kid is its RFC 7638 thumbprint."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.core.errors import ConfigError, ConfigProblem


def _b64url_uint(value: int, length: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes(length, "big")).rstrip(b"=").decode()


def load_p256_private_key(key_file: Path, what: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError([ConfigProblem(str(key_file), None, f"cannot load {what}: {exc.__class__.__name__}")]) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError([ConfigProblem(str(key_file), None, f"{what} must be an EC P-256 private key (PEM)")])
    return key


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    numbers = key.public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": _b64url_uint(numbers.x, 32), "y": _b64url_uint(numbers.y, 32)}


def thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638: a kid that changes exactly when the key does."""
    canonical = json.dumps(jwk, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def new_private_key_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
