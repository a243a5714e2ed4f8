"""X-Idgate-Assertion: short-lived ES256 JWTs that tell an upstream who idgate authenticated
(DESIGN §6), and the JWKS that lets the upstream verify them."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from cachetools import LRUCache
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.core.model import Identity, Surface
from proxy.keys import load_p256_private_key, public_jwk, thumbprint

ASSERTION_ISSUER = "idgate"

# An assertion's `aud` names what the decision was about, namespaced by the kind of surface that made it:
# a route's name and a host name can be equal, and an assertion minted where one was decided must never
# be accepted where the other is expected.
_AUDIENCE_KINDS = {
    Surface.PROXY: "route",                  # the route's name: the reverse proxy forwards to that route only
    Surface.FORWARD_AUTH: "forward-auth",    # the host the fronting proxy asked about
    Surface.EXT_AUTHZ_HTTP: "ext-authz",     # the host Envoy asked about (both transports decide alike)
    Surface.EXT_AUTHZ_GRPC: "ext-authz",
}


def audience(surface: Surface, name: str) -> str:
    """The `aud` of an X-Idgate-Assertion: `route:<route>`, `forward-auth:<host>` or `ext-authz:<host>`."""
    return f"{_AUDIENCE_KINDS[surface]}:{name}"


def load_signing_key(key_file: Path | None) -> ec.EllipticCurvePrivateKey:
    """The configured P-256 key, or a fresh one (valid for this process only) when none is configured."""
    if key_file is None:
        return ec.generate_private_key(ec.SECP256R1())
    return load_p256_private_key(key_file, "assertion key")


class AssertionSigner:
    """Signs assertions and caches each one for half its lifetime: signing costs ~100 µs,
    a cache hit costs a dict lookup, and an upstream never sees an assertion near its expiry."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, ttl: float, *, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._ttl = ttl
        self._clock = clock
        self._public_jwk = public_jwk(key.public_key())
        self.kid = thumbprint(self._public_jwk)
        self._cache: LRUCache[tuple[object, ...], tuple[str, float]] = LRUCache(maxsize=10000)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{**self._public_jwk, "kid": self.kid, "use": "sig", "alg": "ES256"}]}

    def sign(self, identity: Identity, audience: str) -> str:
        now = self._clock()
        # Everything the assertion states is in the key, so one token's assertion never speaks for another.
        cache_key = (identity.issuer, identity.subject, audience, identity.groups, identity.client_id,
                     identity.expires_at)
        cached = self._cache.get(cache_key)
        if cached is not None and cached[1] - now > self._ttl / 2:
            return cached[0]
        expires = min(now + self._ttl, identity.expires_at)
        claims = {
            "iss": ASSERTION_ISSUER,
            "aud": audience,
            "sub": identity.subject,
            "idp": identity.issuer,
            "groups": list(identity.groups),
            "iat": int(now),
            "exp": int(expires),
        }
        if identity.client_id:
            claims["client_id"] = identity.client_id
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self.kid, "typ": "idgate-assertion+jwt"})
        self._cache[cache_key] = (token, expires)
        return token
