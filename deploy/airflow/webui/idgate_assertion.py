"""Verifies idgate's X-Idgate-Assertion in the process of the app behind idgate (Airflow's webserver or API
server): an ES256 JWT idgate signs for one route, checked against the JWKS on idgate's admin listener.

Standalone on purpose (PyJWT only, no idgate import): it is copied next to the app's own config.  The app's
process is not idgate's event loop, so PyJWT's blocking PyJWKClient is the right client here."""

from __future__ import annotations

from dataclasses import dataclass

import jwt

HEADER = "X-Idgate-Assertion"
ISSUER = "idgate"                       # proxy/assertion.py ASSERTION_ISSUER
TOKEN_TYPE = "idgate-assertion+jwt"     # the `typ` header idgate signs with
# Clocks of idgate and the app differ a little; an assertion lives a few minutes.
LEEWAY_SECONDS = 5


class InvalidAssertion(Exception):
    """No assertion, or one that idgate did not sign for this route (or no longer vouches for)."""


@dataclass(frozen=True, slots=True)
class AssertedIdentity:
    subject: str                  # `sub`: the person idgate authenticated
    identity_provider: str        # `idp`: the issuer that authenticated them
    groups: tuple[str, ...]


class AssertionVerifier:
    """`route` is the name of idgate's route in front of the app: idgate signs `aud` = `route:<name>`, so an
    assertion minted for another route (another app) is refused here."""

    def __init__(self, jwks_url: str, route: str, *, identity_providers: tuple[str, ...] = (),
                 jwks_client: jwt.PyJWKClient | None = None) -> None:
        # PyJWKClient caches the key set and refetches it when a kid is unknown (idgate's key rotation).
        self._jwks = jwks_client or jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300, timeout=5)
        self.audience = f"route:{route}"
        # With several issuers in idgate, the same `sub` can name two people: pin the ones this app trusts.
        self._identity_providers = identity_providers

    def verify(self, token: str | None) -> AssertedIdentity:
        if not token:
            raise InvalidAssertion(f"no {HEADER}: the request did not come through idgate")
        try:
            if jwt.get_unverified_header(token).get("typ") != TOKEN_TYPE:
                raise InvalidAssertion("not an idgate assertion")
            key = self._jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(token, key.key, algorithms=["ES256"], audience=self.audience, issuer=ISSUER,
                                leeway=LEEWAY_SECONDS,
                                options={"require": ["iss", "aud", "sub", "iat", "exp"], "strict_aud": True})
        except jwt.PyJWTError as exc:
            raise InvalidAssertion(f"{HEADER} is not valid: {type(exc).__name__}") from exc
        subject, provider, groups = claims["sub"], claims.get("idp"), claims.get("groups", [])
        if not isinstance(subject, str) or not subject or not isinstance(provider, str):
            raise InvalidAssertion("the assertion names no subject or identity provider")
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise InvalidAssertion("the assertion's groups are not a list of strings")
        if self._identity_providers and provider not in self._identity_providers:
            raise InvalidAssertion("the assertion's identity provider is not one this app trusts")
        return AssertedIdentity(subject, provider, tuple(groups))
