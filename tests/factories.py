"""Shared test factories: identities, signing keys and tokens, gateway key rings and sessions.  Imported by
tests, never by proxy/."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import textwrap
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proxy.aws.gateway_keys import KeyRing, parse_key_ring
from proxy.aws.gateway_tokens import GatewaySession
from proxy.core.model import Identity

DEFAULT_ISSUER = "https://issuer.test"


def make_identity(
    subject: str = "svc-etl-7",
    *,
    issuer: str = DEFAULT_ISSUER,
    groups: tuple[str, ...] = (),
    client_id: str | None = None,
    audience: tuple[str, ...] = ("orders-api",),
    claims: dict[str, Any] | None = None,
    expires_in: float = 300.0,
) -> Identity:
    all_claims: dict[str, Any] = {"iss": issuer, "sub": subject, "groups": list(groups)}
    all_claims.update(claims or {})
    return Identity(
        issuer=issuer,
        subject=subject,
        audience=audience,
        client_id=client_id,
        groups=groups,
        expires_at=time.time() + expires_in,
        claims=MappingProxyType(all_claims),
    )


# -- signing keys and tokens -------------------------------------------------------------------------

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key as an issuer holds it, with the kid and alg it signs under."""

    kid: str
    alg: str
    private_key: PrivateKey

    def public_jwk(self, **extra: Any) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(jwt.get_algorithm_by_name(self.alg).to_jwk(self.private_key.public_key()))
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        jwk.update(extra)
        return {k: v for k, v in jwk.items() if v is not None}

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


_RSA_CACHE: dict[int, rsa.RSAPrivateKey] = {}


def make_rsa_key(kid: str = "rsa-1", alg: str = "RS256", *, bits: int = 2048, fresh: bool = False) -> SigningKey:
    """An RSA signing key.  Key generation is slow, so one key per size is shared unless `fresh`."""
    if fresh or bits not in _RSA_CACHE:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        if fresh:
            return SigningKey(kid, alg, key)
        _RSA_CACHE[bits] = key
    return SigningKey(kid, alg, _RSA_CACHE[bits])


def make_ec_key(kid: str = "ec-1") -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def jwks_for(*keys: SigningKey) -> dict[str, Any]:
    """The public JWKS document an issuer holding these keys would serve."""
    return {"keys": [k.public_jwk() for k in keys]}


def access_claims(
    *,
    issuer: str = DEFAULT_ISSUER,
    subject: str = "svc-etl-7",
    audience: str | list[str] = "orders-api",
    expires_in: float = 300.0,
    now: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The claims of a valid access token; pass a claim as None to leave it out."""
    now = time.time() if now is None else now
    claims: dict[str, Any] = {
        "iss": issuer, "sub": subject, "aud": audience, "client_id": subject,
        "iat": int(now), "exp": int(now + expires_in), "jti": secrets.token_hex(8),
    }
    claims.update(extra)
    return {k: v for k, v in claims.items() if v is not None}


def sign_token(
    claims: Any,
    key: SigningKey,
    *,
    alg: str | None = None,
    typ: str | None = "at+jwt",
    kid: str | None = "",
    headers: dict[str, Any] | None = None,
) -> str:
    """A token signed by `key` over the JSON of `claims`, whatever it holds (PyJWS, so no claim checks:
    non-string `iss`, `Infinity`, arrays all get signed; bytes are signed as they are, for JSON that no
    encoder writes).  `typ=None` leaves typ out (ID-token shaped); `kid=None` leaves the kid out, the
    default "" uses the key's own kid."""
    header: dict[str, Any] = {"typ": typ}  # None makes PyJWT drop typ instead of adding "JWT"
    if kid is not None:
        header["kid"] = key.kid if kid == "" else kid
    header.update(headers or {})
    payload = claims if isinstance(claims, bytes) else json.dumps(claims, separators=(",", ":")).encode()
    return jwt.PyJWS().encode(payload, key.private_key, algorithm=alg or key.alg, headers=header)


def b64url(data: bytes | dict[str, Any] | list[Any] | str) -> str:
    """Unpadded base64url of raw bytes, or of the JSON of an object, as a JWS part."""
    if isinstance(data, str):
        data = data.encode()
    elif not isinstance(data, bytes):
        data = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def forge_token(header: Any, payload: Any, signature: bytes = b"") -> str:
    """A compact JWS assembled by hand, for tokens no honest library would produce."""
    return f"{b64url(header)}.{b64url(payload)}.{b64url(signature)}"


def hmac_token(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    """An HS256 token keyed by `secret` (the algorithm-confusion attack uses the issuer's public PEM)."""
    signing_input = f"{b64url(header)}.{b64url(payload)}".encode()
    return f"{signing_input.decode()}.{b64url(hmac.new(secret, signing_input, hashlib.sha256).digest())}"


class FakeClock:
    """An injectable clock (seconds since the epoch) that only moves when told to."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def minimal_config(tmp_path: Path, body: str) -> Path:
    """An idgate.yaml with one issuer and an empty policies directory, plus `body` (dedented)."""
    (tmp_path / "policies").mkdir(exist_ok=True)
    path = tmp_path / "idgate.yaml"
    path.write_text("issuers: [{issuer: http://127.0.0.1:9400, audiences: [orders-api]}]\n"
                    "policies_dir: policies\n" + textwrap.dedent(body))
    return path


def make_key_ring(masters: Mapping[str, bytes] | None = None, *, active: str | None = None,
                  redaction: bytes | None = None) -> KeyRing:
    """A gateway key ring of `masters` (key id -> master key bytes; default one fresh key "k1"), through
    parse_key_ring, as a replica would load it.  Pass the same bytes to two rings to share a key."""
    masters = dict(masters) if masters is not None else {"k1": secrets.token_bytes(32)}
    doc: dict[str, Any] = {"active": active or next(iter(masters)),
                           "keys": {kid: base64.b64encode(raw).decode() for kid, raw in masters.items()}}
    if redaction is not None:
        doc["redaction_key"] = base64.b64encode(redaction).decode()
    return parse_key_ring(json.dumps(doc), "<test ring>")


def make_gateway_session(*, lifetime: int = 3600, now: float | None = None, **overrides: Any) -> GatewaySession:
    """A gateway session issued now (wall clock unless given) for `lifetime` seconds."""
    issued = int(time.time() if now is None else now)
    fields: dict[str, Any] = {
        "issuer": DEFAULT_ISSUER, "subject": "svc-etl-7", "client_id": "etl", "groups": ("data-eng",),
        "claims": {"tenant": "acme"}, "role_arn": "arn:aws:iam::123456789012:role/orders-reader",
        "rule_ids": ("orders-read",), "scope_sha256": hashlib.sha256(b"orders-read").hexdigest(),
        "issued_at": issued, "expires_at": issued + lifetime,
    }
    fields.update(overrides)
    return GatewaySession(**fields)


# --- audit records, shaped as proxy/pipeline.py and proxy/aws/gateway_records.py write them ----------------

def gateway_decision(request_id: str = "r1", *, sub: str = "svc-etl-acme", keys: tuple[Any, ...] = ("acme",),
                     table: str = "orders", operation: str = "GetItem", decision: str = "allow",
                     rule: str | None = "tenant-orders", ts: str = "2026-11-22T10:00:00.000000Z",
                     **fields: Any) -> dict[str, Any]:
    """A DynamoDB gateway call's decision record (its touches name `keys` of `table`)."""
    touch = {"table": table, "action": operation, "keys": list(keys), "attributes": "*", "rule": rule}
    return {"event": "decision", "request_id": request_id, "surface": "dynamodb", "decision": decision, "rule": rule,
            "reasons": ["matched" if decision == "allow" else "leading_key_not_granted"], "ts": ts,
            "identity": {"iss": DEFAULT_ISSUER, "sub": sub, "client_id": None, "groups": ["data-eng"]},
            "client": {"addr": "127.0.0.1"}, "target": {"method": "POST", "host": "127.0.0.1", "path": "/.idgate/dynamodb"},
            "dynamodb": {"operation": operation, "tables": [table], "touches": [touch]}, **fields}


def gateway_outcome(request_id: str = "r1", *, items: tuple[tuple[str, str], ...] = (("acme", "1"),),
                    table: str = "orders", operation: str = "GetItem", rule: str | None = "tenant-orders",
                    ts: str = "2026-11-22T10:00:00.100000Z", **fields: Any) -> dict[str, Any]:
    """Its outcome: DynamoDB returned the items of these (partition, sort) keys."""
    keys = [[table, pk, sk] for pk, sk in items]
    return {"event": "outcome", "request_id": request_id, "surface": "dynamodb", "rule": rule, "status": 200,
            "ts": ts, "bytes_in": 10, "bytes_out": 100, "duration_ms": 1.5,
            "dynamodb": {"operation": operation, "status": 200,
                         "returned": {"count": len(keys), "keys": keys, "keys_sha256": "0" * 64}}, **fields}


def http_decision(request_id: str = "h1", *, sub: str = "svc-web-1", host: str = "orders.internal",
                  path: str = "/v1/orders/7", decision: str = "allow", rule: str | None = "etl-read-orders",
                  ts: str = "2026-11-22T10:00:00.000000Z", **fields: Any) -> dict[str, Any]:
    return {"event": "decision", "request_id": request_id, "surface": "proxy", "decision": decision, "rule": rule,
            "reasons": ["matched" if decision == "allow" else "no_matching_rule"], "ts": ts,
            "identity": {"iss": DEFAULT_ISSUER, "sub": sub, "client_id": None, "groups": []},
            "client": {"addr": "127.0.0.1"}, "target": {"method": "GET", "host": host, "path": path}, **fields}
