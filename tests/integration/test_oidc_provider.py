"""TokenVerifier against a real OpenID Provider (node oidc-provider 9.x): client_credentials JWT access
tokens via discovery, a real ID token refused as an access token, key rotation, and a JWKS outage."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import pytest

from proxy.config import IssuerConfig
from proxy.core.errors import AuthenticationError, DependencyError
from proxy.metrics import Metrics
from proxy.oidc import TokenVerifier
from tests.factories import FakeClock
from tests.harness.oidc_provider import OidcProvider

ORDERS = "https://orders.internal"
BILLING = "https://billing.internal"
ES = "https://es.internal"

Make = Callable[..., Awaitable[TokenVerifier]]


@pytest.fixture
async def make_verifier(oidc_provider: OidcProvider) -> AsyncIterator[Make]:
    """Started verifiers for the real OP (keys found through discovery); closed after the test."""
    made: list[TokenVerifier] = []
    async with aiohttp.ClientSession() as session:
        async def make(clock: Callable[[], float] = time.time, metrics: Metrics | None = None,
                       **overrides: Any) -> TokenVerifier:
            settings: dict[str, Any] = {"audiences": (ORDERS,), "require_typ": "at+jwt"} | overrides
            issuer = IssuerConfig(issuer=oidc_provider.issuer, **settings)
            verifier = TokenVerifier([issuer], session, metrics or Metrics(), clock=clock)
            made.append(verifier)
            await verifier.start()
            return verifier

        yield make
        for verifier in made:
            await verifier.close()


def jwks_fetches(metrics: Metrics, issuer: str, result: str) -> float:
    return metrics.registry.get_sample_value("idgate_jwks_fetches_total", {"issuer": issuer, "result": result}) or 0.0


async def test_client_credentials_token_verifies(oidc_provider: OidcProvider, make_verifier: Make) -> None:
    verifier = await make_verifier(allowed_client_ids=("svc-etl-7",))
    assert verifier.ready()
    identity = await verifier.verify(oidc_provider.token("svc-etl-7", ORDERS, scope="orders:read"))
    assert identity.issuer == oidc_provider.issuer
    assert identity.subject == "svc-etl-7" and identity.client_id == "svc-etl-7"
    assert identity.audience == (ORDERS,)
    assert identity.groups == ("data-eng", "etl")
    assert identity.claims["scope"] == "orders:read"
    assert identity.expires_at > time.time()


async def test_string_groups_claim_is_one_group(oidc_provider: OidcProvider, make_verifier: Make) -> None:
    verifier = await make_verifier()
    identity = await verifier.verify(oidc_provider.token("svc-report", ORDERS))
    assert identity.subject == "svc-report" and identity.groups == ("reporting",)


async def test_es256_access_token_verifies(oidc_provider: OidcProvider, make_verifier: Make) -> None:
    verifier = await make_verifier(audiences=(ES,))
    token = oidc_provider.token("svc-etl-7", ES)
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert (await verifier.verify(token)).audience == (ES,)


async def test_token_for_another_resource_is_refused(oidc_provider: OidcProvider, make_verifier: Make) -> None:
    verifier = await make_verifier()
    with pytest.raises(AuthenticationError) as excinfo:
        await verifier.verify(oidc_provider.token("svc-etl-7", BILLING))
    assert excinfo.value.reason == "bad_audience"


async def test_real_id_token_is_refused_as_access_token(oidc_provider: OidcProvider, make_verifier: Make) -> None:
    id_token = oidc_provider.id_token("web-portal", login_hint="alice")
    assert "typ" not in jwt.get_unverified_header(id_token)
    # The audience is right (an ID token's aud is the client), so only the typ check stands in the way.
    strict = await make_verifier(audiences=("web-portal",))
    with pytest.raises(AuthenticationError) as excinfo:
        await strict.verify(id_token)
    assert excinfo.value.reason == "wrong_token_type"
    lenient = await make_verifier(audiences=("web-portal",), require_typ=None)
    assert (await lenient.verify(id_token)).subject == "alice"


async def test_key_rotation_is_picked_up_by_the_unknown_kid_refetch(
        oidc_provider: OidcProvider, make_verifier: Make) -> None:
    clock, metrics = FakeClock(), Metrics()
    verifier = await make_verifier(clock, metrics, refresh_interval=3600.0, unknown_kid_min_interval=60.0)
    before = oidc_provider.token("svc-etl-7", ORDERS)
    await verifier.verify(before)
    assert jwks_fetches(metrics, oidc_provider.issuer, "ok") == 1

    new_rsa_kid = oidc_provider.rotate_keys()[0]
    after = oidc_provider.token("svc-etl-7", ORDERS)
    assert jwt.get_unverified_header(after)["kid"] == new_rsa_kid
    assert (await verifier.verify(after)).subject == "svc-etl-7"
    assert jwks_fetches(metrics, oidc_provider.issuer, "ok") == 2
    assert (await verifier.verify(before)).subject == "svc-etl-7"  # the old key is still published

    # A second rotation within the interval is not fetched for; once the interval passes, it is.
    oidc_provider.rotate_keys()
    newest = oidc_provider.token("svc-etl-7", ORDERS)
    with pytest.raises(AuthenticationError) as excinfo:
        await verifier.verify(newest)
    assert excinfo.value.reason == "unknown_kid"
    assert jwks_fetches(metrics, oidc_provider.issuer, "ok") == 2
    clock.advance(61)
    assert (await verifier.verify(newest)).subject == "svc-etl-7"
    assert jwks_fetches(metrics, oidc_provider.issuer, "ok") == 3


async def test_outage_keeps_last_good_keys_until_max_stale(oidc_provider: OidcProvider, make_verifier: Make) -> None:
    clock = FakeClock()
    verifier = await make_verifier(clock, refresh_interval=0.05, max_stale=300.0)
    status = verifier.status()[oidc_provider.issuer]
    assert verifier.ready() and status["keys"] >= 2
    try:
        oidc_provider.outage(True)
        await verifier.refresh_keys()   # what the background refresh does every refresh_interval
        assert "503" in verifier.status()[oidc_provider.issuer]["last_error"]
        # Last good keys: still ready, fresh tokens still verify.
        assert verifier.ready()
        assert (await verifier.verify(oidc_provider.token("svc-etl-7", ORDERS))).subject == "svc-etl-7"

        clock.advance(301)  # past max_stale, still inside the OP tokens' 600 s life
        assert not verifier.ready()
        assert verifier.status()[oidc_provider.issuer]["ready"] is False
        with pytest.raises(DependencyError) as excinfo:
            await verifier.verify(oidc_provider.token("svc-etl-7", ORDERS))
        assert excinfo.value.reason == "issuer_unavailable"
    finally:
        oidc_provider.outage(False)
    await verifier.refresh_keys()   # the issuer is back: one successful fetch makes the keys fresh again
    assert verifier.ready()
    assert verifier.status()[oidc_provider.issuer]["last_error"] is None
    assert (await verifier.verify(oidc_provider.token("svc-etl-7", ORDERS))).subject == "svc-etl-7"


async def test_stale_keys_recover_on_the_next_request_once_the_issuer_is_back(oidc_provider: OidcProvider,
                                                                            make_verifier: Make) -> None:
    """With no usable keys, a request refetches (single-flight, at most one attempt a second): recovery
    takes one round trip, not the unknown-kid interval or the background refresh interval."""
    clock, metrics = FakeClock(), Metrics()
    issuer = oidc_provider.issuer
    verifier = await make_verifier(clock, metrics, refresh_interval=200.0, max_stale=400.0,
                                   unknown_kid_min_interval=60.0)
    try:
        oidc_provider.outage(True)
        clock.advance(401)                       # the keys are stale (inside the OP tokens' 600 s life)
        for _ in range(3):                       # three requests in one second: one fetch attempt
            with pytest.raises(DependencyError):
                await verifier.verify(oidc_provider.token("svc-etl-7", ORDERS))
        assert jwks_fetches(metrics, issuer, "error") == 1
    finally:
        oidc_provider.outage(False)
    clock.advance(2)                             # well inside unknown_kid_min_interval and refresh_interval
    assert (await verifier.verify(oidc_provider.token("svc-etl-7", ORDERS))).subject == "svc-etl-7"
    assert verifier.ready()


async def test_an_unknown_kid_while_the_issuer_is_down_is_unavailable_not_invalid(oidc_provider: OidcProvider,
                                                                                 make_verifier: Make) -> None:
    """A token signed by a key idgate could not fetch (rotated during an outage) is not known to be bad:
    503 issuer_unavailable, so the client retries, and it verifies once the issuer is back."""
    clock = FakeClock()
    verifier = await make_verifier(clock, refresh_interval=3600.0, unknown_kid_min_interval=60.0)
    await verifier.verify(oidc_provider.token("svc-etl-7", ORDERS))
    oidc_provider.rotate_keys()
    rotated = oidc_provider.token("svc-etl-7", ORDERS)
    try:
        oidc_provider.outage(True)
        with pytest.raises(DependencyError) as excinfo:
            await verifier.verify(rotated)
        assert excinfo.value.reason == "issuer_unavailable"
    finally:
        oidc_provider.outage(False)
    clock.advance(61)
    assert (await verifier.verify(rotated)).subject == "svc-etl-7"


async def test_issuer_down_at_start_is_reported_not_raised(oidc_provider: OidcProvider, make_verifier: Make) -> None:
    try:
        oidc_provider.outage(True)
        verifier = await make_verifier(refresh_interval=0.05)
        assert not verifier.ready()
        assert verifier.status()[oidc_provider.issuer]["keys"] == 0
        with pytest.raises(DependencyError):
            await verifier.verify(oidc_provider.token("svc-etl-7", ORDERS))
    finally:
        oidc_provider.outage(False)
    await verifier.refresh_keys()
    assert verifier.ready()
    assert (await verifier.verify(oidc_provider.token("svc-etl-7", ORDERS))).subject == "svc-etl-7"
