"""A development OIDC issuer: discovery, JWKS and a token endpoint that mints access tokens for
named demo identities.  Loopback only; never part of `idgate serve`."""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.core.errors import ConfigError, ConfigProblem


class LoginRoutes(Protocol):
    """Browser login at this issuer (proxy.dev.login_issuer.DevLogin)."""

    def discovery(self) -> dict[str, Any]: ...
    def add_routes(self, app: web.Application) -> None: ...


@dataclass(frozen=True, slots=True)
class DemoIdentity:
    subject: str
    groups: tuple[str, ...] = ()
    claims: Mapping[str, Any] = field(default_factory=dict)


DEMO_IDENTITIES = {
    "svc-etl-7": DemoIdentity("svc-etl-7", ("data-eng",), {"tenant": "acme"}),
    "svc-web-1": DemoIdentity("svc-web-1", ("web",), {"tenant": "acme"}),
}


def require_loopback(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ConfigError([ConfigProblem("<dev>", None, f"development servers listen on loopback only, not {host!r}")])


class DevIssuer:
    """Holds one ES256 key and signs `at+jwt` access tokens as the issuer at `issuer_url`."""

    def __init__(self, issuer_url: str, audience: str, key: ec.EllipticCurvePrivateKey | None = None) -> None:
        self.issuer_url = issuer_url.rstrip("/")
        self.audience = audience
        self._key = key or ec.generate_private_key(ec.SECP256R1())
        self._jwk = jwt.algorithms.ECAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        self.kid = "dev-" + uuid.uuid5(uuid.NAMESPACE_URL, str(self._jwk)).hex[:12]

    def mint(self, identity: DemoIdentity, *, lifetime: int = 900, client_id: str = "idgate-demo") -> str:
        now = int(time.time())
        claims = {
            **identity.claims, "iss": self.issuer_url, "sub": identity.subject, "aud": self.audience,
            "client_id": client_id, "groups": list(identity.groups), "iat": now, "nbf": now,
            "exp": now + lifetime, "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self.kid, "typ": "at+jwt"})

    def sign(self, claims: dict[str, Any]) -> str:
        """An ID token (or any JWT) with the issuer's key: `typ` JWT, not an access token."""
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self.kid, "typ": "JWT"})

    def jwks(self) -> dict[str, Any]:
        """The issuer's public key as a JWKS document (served at /jwks, or written to a `jwks_file`)."""
        return {"keys": [{**self._jwk, "kid": self.kid, "use": "sig", "alg": "ES256"}]}

    def app(self, login: LoginRoutes | None = None) -> web.Application:
        """Discovery, JWKS and machine tokens; with `login`, the browser login of proxy.dev.login_issuer too."""
        async def discovery(request: web.Request) -> web.Response:
            return web.json_response({"issuer": self.issuer_url, "jwks_uri": f"{self.issuer_url}/jwks",
                                      "token_endpoint": f"{self.issuer_url}/token",
                                      **(login.discovery() if login else {})})

        async def jwks(request: web.Request) -> web.Response:
            return web.json_response(self.jwks())

        async def token(request: web.Request) -> web.Response:
            subject = request.query.get("sub", "")
            identity = DEMO_IDENTITIES.get(subject)
            if identity is None:
                return web.json_response({"code": "unknown_identity", "known": sorted(DEMO_IDENTITIES)}, status=404)
            return web.Response(text=self.mint(identity) + "\n")

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks", jwks)
        app.router.add_get("/token", token)
        if login is not None:
            login.add_routes(app)
        return app
