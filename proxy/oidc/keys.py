"""A JWKS document → an immutable KeySet of verification keys indexed by (kid, alg).  Only public
signature keys of the kinds an issuer's algorithm allow-list can use are kept; the rest is dropped."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

# alg -> (kty, crv).  Asymmetric only: an HMAC alg would let a public key act as a shared secret.
SUPPORTED_ALGORITHMS: Mapping[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None), "RS384": ("RSA", None), "RS512": ("RSA", None),
    "PS256": ("RSA", None), "PS384": ("RSA", None), "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"), "ES384": ("EC", "P-384"), "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", "Ed25519"),
}
MIN_RSA_BITS = 2048
# Members that only a private or symmetric key has: an issuer publishing them is broken, and a key
# object built from them must never be used for verification.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class JwksError(ValueError):
    """The document is not a usable JWKS (the message is safe to report in /readyz)."""


@dataclass(frozen=True, slots=True)
class KeySet:
    by_kid: Mapping[tuple[str, str], jwt.PyJWK]               # (kid, alg) -> key
    by_alg: Mapping[str, tuple[jwt.PyJWK, ...]] = field(default_factory=dict)
    kids: frozenset[str] = frozenset()
    ignored: int = 0                                           # keys dropped as unusable

    def __len__(self) -> int:
        return len(self.kids)

    def find(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        """The key for a token header; a token without `kid` is accepted only when one key fits."""
        if kid is not None:
            return self.by_kid.get((kid, alg))
        candidates = self.by_alg.get(alg, ())
        return candidates[0] if len(candidates) == 1 else None


def parse_jwks(document: Any, algorithms: Sequence[str]) -> KeySet:
    """Build the KeySet an issuer with this allow-list can verify with; JwksError when none is usable."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("JWKS document has no keys list")
    by_kid: dict[tuple[str, str], jwt.PyJWK] = {}
    by_alg: dict[str, list[jwt.PyJWK]] = {}
    kids: set[str] = set()
    ignored = 0
    for jwk in document["keys"]:
        usable = list(_verification_keys(jwk, algorithms))
        if not usable:
            ignored += 1
            continue
        kid = jwk.get("kid")
        for alg, key in usable:
            if isinstance(kid, str):
                # The first key listed for a kid wins; a later duplicate cannot shadow it.
                if (kid, alg) in by_kid:
                    continue
                by_kid[(kid, alg)] = key
                kids.add(kid)
            by_alg.setdefault(alg, []).append(key)
    if not by_alg:
        raise JwksError("JWKS has no usable signature key for the allowed algorithms")
    return KeySet(by_kid=by_kid, by_alg={a: tuple(k) for a, k in by_alg.items()}, kids=frozenset(kids),
                  ignored=ignored)


def _verification_keys(jwk: Any, algorithms: Iterable[str]) -> Iterable[tuple[str, jwt.PyJWK]]:
    if not isinstance(jwk, dict) or _PRIVATE_MEMBERS & jwk.keys():
        return
    if jwk.get("use", "sig") != "sig":
        return
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        return
    declared = jwk.get("alg")
    for alg in algorithms:
        kty, crv = SUPPORTED_ALGORITHMS[alg]
        if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
            continue
        if declared is not None and declared != alg:
            continue  # a key bound to one alg is never used with another
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue  # a malformed key is dropped like any other unusable one
        if isinstance(key.key, rsa.RSAPublicKey) and key.key.key_size < MIN_RSA_BITS:
            continue
        yield alg, key
