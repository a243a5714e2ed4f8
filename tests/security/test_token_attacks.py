"""One named test per attack on bearer-token verification.  The verifier fetches its keys over HTTP
from a tiny JWKS server on a free loopback port that counts every fetch."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.config import IssuerConfig
from proxy.core.errors import AuthenticationError, ConfigError, DependencyError, IdgateError
from proxy.metrics import Metrics
from proxy.oidc import TokenVerifier
from tests.factories import (
    FakeClock, access_claims, b64url, forge_token, hmac_token, jwks_for, make_ec_key, make_rsa_key, sign_token,
)

RSA = make_rsa_key("rsa-1")
EC = make_ec_key("ec-1")
AUDIENCE = "orders-api"


@dataclass
class JwksServer:
    """Serves discovery and a JWKS; `fetches` counts JWKS requests."""

    jwks: dict[str, Any] = field(default_factory=lambda: jwks_for(RSA, EC))
    discovery_issuer: str | None = None          # None: the server's own URL (an honest issuer)
    raw_jwks: bytes | None = None                # served instead of `jwks` when set
    redirect_jwks_to: str | None = None
    fetches: int = 0
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        return app

    async def _discovery(self, _request: web.Request) -> web.Response:
        issuer = self.url if self.discovery_issuer is None else self.discovery_issuer
        return web.json_response({"issuer": issuer, "jwks_uri": f"{self.url}/jwks"})

    async def _jwks(self, _request: web.Request) -> web.Response:
        self.fetches += 1
        if self.redirect_jwks_to is not None:
            raise web.HTTPFound(self.redirect_jwks_to)
        if self.raw_jwks is not None:
            return web.Response(body=self.raw_jwks, content_type="application/json")
        return web.json_response(self.jwks)


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    test_server = TestServer(server.app(), host="127.0.0.1", port=0)
    await test_server.start_server()
    server.url = str(test_server.make_url("")).rstrip("/")
    try:
        yield server
    finally:
        await test_server.close()


Make = Callable[..., Awaitable[TokenVerifier]]


@pytest.fixture
async def make_verifier(jwks_server: JwksServer) -> AsyncIterator[Make]:
    """Builds started verifiers for the JWKS server's issuer; closes them after the test."""
    made: list[TokenVerifier] = []
    async with aiohttp.ClientSession() as session:
        async def make(clock: Callable[[], float] | None = None, *, discovery: bool = False,
                       **overrides: Any) -> TokenVerifier:
            issuer = IssuerConfig(issuer=jwks_server.url, audiences=(AUDIENCE,), require_typ="at+jwt",
                                  jwks_uri=None if discovery else f"{jwks_server.url}/jwks")
            verifier = TokenVerifier([replace(issuer, **overrides)], session, Metrics(), clock=clock or FakeClock())
            made.append(verifier)
            await verifier.start()
            return verifier

        yield make
        for verifier in made:
            await verifier.close()


def claims_for(server: JwksServer, **extra: Any) -> dict[str, Any]:
    return access_claims(issuer=server.url, audience=AUDIENCE, **extra)


async def refused(verifier: TokenVerifier, token: str, error: type[IdgateError] = AuthenticationError) -> str:
    """The reason code of the refusal (the test fails if the token is accepted)."""
    with pytest.raises(error) as excinfo:
        await verifier.verify(token)
    assert type(excinfo.value) is error
    assert token not in excinfo.value.message
    return excinfo.value.reason


# -- sanity: the honest token is accepted, so every refusal below is the attack's doing ------------

async def test_honest_token_is_accepted(make_verifier: Make, jwks_server: JwksServer) -> None:
    verifier = await make_verifier()
    identity = await verifier.verify(sign_token(claims_for(jwks_server), RSA))
    assert identity.subject == "svc-etl-7" and identity.issuer == jwks_server.url


# -- algorithm attacks ----------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none(make_verifier: Make, jwks_server: JwksServer, alg: str) -> None:
    verifier = await make_verifier()
    header = {"alg": alg, "typ": "at+jwt", "kid": RSA.kid}
    for signature in (b"", b"x"):
        token = forge_token(header, claims_for(jwks_server), signature)
        assert await refused(verifier, token) == "alg_not_allowed"


async def test_hs256_signed_with_the_rsa_public_key(make_verifier: Make, jwks_server: JwksServer) -> None:
    verifier = await make_verifier()
    header = {"alg": "HS256", "typ": "at+jwt", "kid": RSA.kid}
    for secret in (RSA.public_pem(), RSA.public_pem().strip(), json.dumps(RSA.public_jwk()).encode()):
        token = hmac_token(header, claims_for(jwks_server), secret)
        assert await refused(verifier, token) == "alg_not_allowed"


async def test_hmac_cannot_even_be_configured(jwks_server: JwksServer) -> None:
    async with aiohttp.ClientSession() as session:
        for alg in ("HS256", "none"):
            issuer = IssuerConfig(issuer=jwks_server.url, audiences=(AUDIENCE,), algorithms=("RS256", alg))
            with pytest.raises(ConfigError):
                TokenVerifier([issuer], session, Metrics())


async def test_symmetric_key_in_the_jwks_is_never_used(make_verifier: Make, jwks_server: JwksServer) -> None:
    secret = b"shared-secret-published-by-mistake"
    jwks_server.jwks = {"keys": [{"kty": "oct", "kid": "oct-1", "k": b64url(secret)}, RSA.public_jwk()]}
    verifier = await make_verifier()
    token = hmac_token({"alg": "HS256", "kid": "oct-1", "typ": "at+jwt"}, claims_for(jwks_server), secret)
    assert await refused(verifier, token) == "alg_not_allowed"


async def test_alg_swapped_to_another_allowed_alg(make_verifier: Make, jwks_server: JwksServer) -> None:
    # ES256 header naming the RSA key's kid: a key is only ever used with its own kty and alg.
    verifier = await make_verifier()
    token = sign_token(claims_for(jwks_server), EC, headers={"kid": RSA.kid})
    assert await refused(verifier, token) == "unknown_kid"


async def test_crit_header_is_not_half_understood(make_verifier: Make, jwks_server: JwksServer) -> None:
    verifier = await make_verifier()
    token = sign_token(claims_for(jwks_server), RSA, headers={"crit": ["exp"], "exp": 1})
    assert await refused(verifier, token) == "unsupported_header"


# -- key lookup -----------------------------------------------------------------------------------

async def test_unknown_kid_flood_fetches_at_most_once(make_verifier: Make, jwks_server: JwksServer) -> None:
    clock = FakeClock()
    verifier = await make_verifier(clock, unknown_kid_min_interval=60.0)
    assert jwks_server.fetches == 1
    tokens = [sign_token(claims_for(jwks_server), RSA, kid=secrets.token_hex(8)) for _ in range(500)]
    results = await asyncio.gather(*(verifier.verify(t) for t in tokens), return_exceptions=True)
    assert all(isinstance(r, AuthenticationError) and r.reason == "unknown_kid" for r in results)
    assert jwks_server.fetches == 2          # one shared refetch for the whole burst
    for token in tokens[:100]:
        assert await refused(verifier, token) == "unknown_kid"
    assert jwks_server.fetches == 2          # and none more within the interval
    clock.advance(61)
    assert await refused(verifier, tokens[0]) == "unknown_kid"
    assert jwks_server.fetches == 3


async def test_kidless_token_with_several_candidate_keys(make_verifier: Make, jwks_server: JwksServer) -> None:
    jwks_server.jwks = jwks_for(RSA, make_rsa_key("rsa-2", fresh=True))
    verifier = await make_verifier()
    assert await refused(verifier, sign_token(claims_for(jwks_server), RSA, kid=None)) == "unknown_kid"


async def test_discovery_document_for_another_issuer(make_verifier: Make, jwks_server: JwksServer) -> None:
    jwks_server.discovery_issuer = "https://attacker.example"
    verifier = await make_verifier(discovery=True)
    assert not verifier.ready()
    assert jwks_server.fetches == 0
    assert await refused(verifier, sign_token(claims_for(jwks_server), RSA), DependencyError) == "issuer_unavailable"


async def test_oversized_jwks_is_not_read(make_verifier: Make, jwks_server: JwksServer) -> None:
    honest = json.dumps(jwks_for(RSA)).encode()
    jwks_server.raw_jwks = honest[:-1] + b', "pad": "' + b"x" * (1024 * 1024) + b'"}'
    verifier = await make_verifier()
    assert not verifier.ready()
    assert "too large" in verifier.status()[jwks_server.url]["last_error"]


async def test_jwks_redirect_is_not_followed(make_verifier: Make, jwks_server: JwksServer) -> None:
    jwks_server.redirect_jwks_to = "http://127.0.0.1:1/jwks"
    verifier = await make_verifier()
    assert not verifier.ready()
    assert "HTTP 302" in verifier.status()[jwks_server.url]["last_error"]


# -- time claims ----------------------------------------------------------------------------------

async def test_expired(make_verifier: Make, jwks_server: JwksServer) -> None:
    clock = FakeClock()
    verifier = await make_verifier(clock)
    token = sign_token(claims_for(jwks_server, now=clock.now - 400, expires_in=300), RSA)
    assert await refused(verifier, token) == "token_expired"


async def test_nbf_in_the_future(make_verifier: Make, jwks_server: JwksServer) -> None:
    clock = FakeClock()
    verifier = await make_verifier(clock)
    token = sign_token(claims_for(jwks_server, now=clock.now, nbf=int(clock.now + 120)), RSA)
    assert await refused(verifier, token) == "token_not_yet_valid"


async def test_missing_exp(make_verifier: Make, jwks_server: JwksServer) -> None:
    verifier = await make_verifier()
    assert await refused(verifier, sign_token(claims_for(jwks_server, exp=None), RSA)) == "missing_claim"


@pytest.mark.parametrize("exp", ["9999999999", True, "Infinity", [9999999999], {"$date": 1}])
async def test_exp_not_a_number(make_verifier: Make, jwks_server: JwksServer, exp: Any) -> None:
    verifier = await make_verifier()
    assert await refused(verifier, sign_token(claims_for(jwks_server, exp=exp), RSA)) == "invalid_claim"


async def test_exp_infinity(make_verifier: Make, jwks_server: JwksServer) -> None:
    # PyJWT signs `Infinity` (a Python float('inf')) into the JSON; strict JSON has no such number.
    verifier = await make_verifier()
    token = sign_token(claims_for(jwks_server, exp=float("inf")), RSA)
    assert await refused(verifier, token) == "malformed_token"


async def test_iat_in_the_future(make_verifier: Make, jwks_server: JwksServer) -> None:
    clock = FakeClock()
    verifier = await make_verifier(clock)
    token = sign_token(claims_for(jwks_server, now=clock.now, iat=int(clock.now + 3600)), RSA)
    assert await refused(verifier, token) == "issued_in_future"


async def test_iat_older_than_max_age(make_verifier: Make, jwks_server: JwksServer) -> None:
    clock = FakeClock()
    verifier = await make_verifier(clock, max_age=3600.0)
    token = sign_token(claims_for(jwks_server, now=clock.now, iat=int(clock.now - 86400)), RSA)
    assert await refused(verifier, token) == "token_too_old"


# -- audience, issuer, type, client ---------------------------------------------------------------

async def test_wrong_audience(make_verifier: Make, jwks_server: JwksServer) -> None:
    verifier = await make_verifier()
    for aud in ("billing-api", ["billing-api", "other"], "ORDERS-API", "orders-api "):
        token = sign_token(access_claims(issuer=jwks_server.url, audience=aud), RSA)
        assert await refused(verifier, token) == "bad_audience"


@pytest.mark.parametrize("variant", ["trailing_slash", "prefix", "suffix", "case", "missing", "not_a_string"])
async def test_wrong_issuer(make_verifier: Make, jwks_server: JwksServer, variant: str) -> None:
    verifier = await make_verifier()
    url = jwks_server.url
    iss = {"trailing_slash": url + "/", "prefix": url[:-1], "suffix": url + "0", "case": url.upper(),
           "missing": None, "not_a_string": [url]}[variant]
    token = sign_token(claims_for(jwks_server, iss=iss), RSA)
    assert await refused(verifier, token) == "unknown_issuer"


async def test_id_token_used_as_access_token(make_verifier: Make, jwks_server: JwksServer) -> None:
    verifier = await make_verifier()
    id_token_claims = claims_for(jwks_server, nonce="n-0S6_WzA2Mj", auth_time=1)
    for typ in (None, "JWT", "id_token+jwt"):
        assert await refused(verifier, sign_token(id_token_claims, RSA, typ=typ)) == "wrong_token_type"


async def test_client_not_in_allowed_client_ids(make_verifier: Make, jwks_server: JwksServer) -> None:
    verifier = await make_verifier(allowed_client_ids=("svc-etl-7",))
    for extra in ({"client_id": "svc-other"}, {"client_id": None, "azp": "svc-other"}, {"client_id": None}):
        assert await refused(verifier, sign_token(claims_for(jwks_server, **extra), RSA)) == "bad_client"


# -- shape ----------------------------------------------------------------------------------------

async def test_over_size_cap_before_any_parsing(make_verifier: Make, jwks_server: JwksServer) -> None:
    verifier = await make_verifier(max_token_bytes=4096)
    garbage = "%" * 4097  # not even a JWS: the size cap must answer before the parser
    assert await refused(verifier, garbage) == "token_too_large"
    padded = sign_token(claims_for(jwks_server, pad="x" * 4096), RSA)
    assert await refused(verifier, padded) == "token_too_large"


@pytest.mark.parametrize("corrupt", ["star", "plus", "slash", "space", "unicode"])
async def test_malformed_base64(make_verifier: Make, jwks_server: JwksServer, corrupt: str) -> None:
    verifier = await make_verifier()
    header, payload, signature = sign_token(claims_for(jwks_server), RSA).split(".")
    bad = {"star": "*", "plus": "+", "slash": "/", "space": " ", "unicode": "é"}[corrupt]
    token = f"{header}.{payload[:10]}{bad}{payload[11:]}.{signature}"
    assert await refused(verifier, token) == "malformed_token"


async def test_base64_padding(make_verifier: Make, jwks_server: JwksServer) -> None:
    # PyJWT accepts "=" padding; a padded spelling would also be a second cache key for one token.
    verifier = await make_verifier()
    header, payload, signature = sign_token(claims_for(jwks_server), RSA).split(".")
    for token in (f"{header}.{payload}.{signature}==", f"{header}==.{payload}.{signature}",
                  f"{header}.{payload}=.{signature}"):
        assert await refused(verifier, token) == "malformed_token"


async def test_header_not_json(make_verifier: Make, jwks_server: JwksServer) -> None:
    verifier = await make_verifier()
    _, payload, signature = sign_token(claims_for(jwks_server), RSA).split(".")
    for header in (b"RS256", b'{"alg":"RS256"', b'"alg"', b"[]"):
        assert await refused(verifier, f"{b64url(header)}.{payload}.{signature}") == "malformed_token"


async def test_payload_json_array(make_verifier: Make, jwks_server: JwksServer) -> None:
    verifier = await make_verifier()
    token = sign_token([claims_for(jwks_server)], RSA)  # validly signed, but not a claims object
    assert await refused(verifier, token) == "malformed_token"


async def test_duplicate_claims(make_verifier: Make, jwks_server: JwksServer) -> None:
    verifier = await make_verifier()
    honest = json.dumps(claims_for(jwks_server))
    payload = honest[:-1] + ', "sub": "admin"}'
    token = forge_token({"alg": "RS256", "kid": RSA.kid, "typ": "at+jwt"}, payload, b"sig")
    assert await refused(verifier, token) == "malformed_token"


async def test_bad_signature_on_tampered_payload(make_verifier: Make, jwks_server: JwksServer) -> None:
    verifier = await make_verifier()
    header, _, signature = sign_token(claims_for(jwks_server), RSA).split(".")
    tampered = b64url(claims_for(jwks_server, subject="svc-admin"))
    assert await refused(verifier, f"{header}.{tampered}.{signature}") == "bad_signature"
    other_key = make_rsa_key(RSA.kid, fresh=True)
    assert await refused(verifier, sign_token(claims_for(jwks_server), other_key)) == "bad_signature"
    header, payload, _ = sign_token(claims_for(jwks_server), EC).split(".")
    assert await refused(verifier, f"{header}.{payload}.") == "bad_signature"
