"""Unit tests of proxy.oidc: Authorization header parsing, the strict compact-JWS parser, JWKS
parsing, claim checks, and the verified-token cache (keys from a local JWKS file, injected clock)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config import IssuerConfig
from proxy.core.errors import AuthenticationError, BadRequest, ConfigError
from proxy.metrics import Metrics
from proxy.core.model import Identity
from proxy.oidc import TokenVerifier, bearer_token
from proxy.oidc.claims import MAX_GROUPS, identity_from_claims
from proxy.oidc.keys import JwksError, parse_jwks
from proxy.oidc.verifier import CACHE_MAX_TTL
from proxy.oidc.wire import parse_compact_jws
from tests.factories import (
    DEFAULT_ISSUER, FakeClock, SigningKey, access_claims, b64url, forge_token, jwks_for, make_ec_key, make_rsa_key,
    sign_token,
)

RSA = make_rsa_key("rsa-1")
EC = make_ec_key("ec-1")
ISSUER = IssuerConfig(issuer=DEFAULT_ISSUER, audiences=("orders-api",), require_typ="at+jwt")


def reason_of(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    return str(getattr(excinfo.value, "reason", ""))


# -- bearer_token ---------------------------------------------------------------------------------

@pytest.mark.parametrize("header", ["Bearer abc.def.ghi", "bearer abc.def.ghi", "BEARER abc.def.ghi"])
def test_bearer_scheme_is_case_insensitive(header: str) -> None:
    assert bearer_token(header) == "abc.def.ghi"


def test_bearer_absent_header_is_none() -> None:
    assert bearer_token(None) is None


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer ", "Bearer  abc", "Bearer abc def", "Bearer abc ",
                                    "Bearer\tabc", "Bearer a,b", "Bearer =abc", "Bearer,abc", " Bearer abc"])
def test_bearer_malformed_is_bad_request(header: str) -> None:
    with pytest.raises(BadRequest) as excinfo:
        bearer_token(header)
    assert reason_of(excinfo) == "malformed_authorization"


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Token abc", "Bearerabc", "Bearer_ abc"])
def test_bearer_other_scheme_is_unauthenticated(header: str) -> None:
    with pytest.raises(AuthenticationError) as excinfo:
        bearer_token(header)
    assert reason_of(excinfo) == "unsupported_scheme"


# -- compact JWS shape ------------------------------------------------------------------------------

def test_compact_jws_decodes_header_and_payload() -> None:
    jws = parse_compact_jws(forge_token({"alg": "RS256"}, {"sub": "x"}, b"sig"))
    assert jws.header == {"alg": "RS256"} and jws.payload == {"sub": "x"}


@pytest.mark.parametrize("token", [
    "a.b", "a.b.c.d", ".b.c", "a..c", "a.b.c\n", " a.b.c",
    forge_token({"alg": "RS256"}, {"sub": "x"}, b"s") + "=",
])
def test_compact_jws_shape_errors(token: str) -> None:
    with pytest.raises(AuthenticationError) as excinfo:
        parse_compact_jws(token)
    assert reason_of(excinfo) == "malformed_token"


def test_non_canonical_base64_is_refused() -> None:
    # "sig" is 3 bytes -> 4 chars, no spare bits; a 1-byte signature leaves 4 spare bits in 2 chars.
    token = forge_token({"alg": "RS256"}, {"sub": "x"}, b"\x00")
    assert token.endswith(".AA")
    parse_compact_jws(token)
    with pytest.raises(AuthenticationError) as excinfo:
        parse_compact_jws(token[:-1] + "B")  # same byte, non-zero trailing bits
    assert reason_of(excinfo) == "malformed_token"


@pytest.mark.parametrize("payload", [b'{"sub":"a","sub":"b"}', b'{"exp":NaN}', b'{"exp":Infinity}', b"\xff\xfe"])
def test_ambiguous_json_is_refused(payload: bytes) -> None:
    with pytest.raises(AuthenticationError) as excinfo:
        parse_compact_jws(f"{b64url({'alg': 'RS256'})}.{b64url(payload)}.{b64url(b'sig')}")
    assert reason_of(excinfo) == "malformed_token"


# -- JWKS parsing -----------------------------------------------------------------------------------

def test_jwks_keeps_only_public_signature_keys_of_allowed_kinds() -> None:
    private = RSA.public_jwk(kid="private") | {"d": "AQAB"}
    enc = RSA.public_jwk(kid="enc", use="enc")
    oct_key = {"kty": "oct", "kid": "oct", "k": "c2VjcmV0"}
    verify_only = EC.public_jwk(kid="ops", key_ops=["verify"])
    sign_only = EC.public_jwk(kid="sign-ops", key_ops=["sign"])
    keys = parse_jwks({"keys": [private, enc, oct_key, RSA.public_jwk(), verify_only, sign_only, "junk"]},
                      ("RS256", "ES256"))
    assert keys.kids == {"rsa-1", "ops"}
    assert keys.ignored == 5
    assert keys.find("rsa-1", "RS256") is not None
    assert keys.find("rsa-1", "ES256") is None        # a key never serves another kty
    assert keys.find("ops", "ES256") is not None


def test_jwks_key_bound_to_alg_is_not_used_with_another() -> None:
    keys = parse_jwks(jwks_for(RSA), ("RS256", "PS256"))
    assert keys.find("rsa-1", "RS256") is not None
    assert keys.find("rsa-1", "PS256") is None
    unbound = parse_jwks({"keys": [RSA.public_jwk(alg=None)]}, ("RS256", "PS256"))
    assert unbound.find("rsa-1", "PS256") is not None


def test_jwks_first_key_of_a_kid_wins() -> None:
    other = make_rsa_key("rsa-1", fresh=True)
    keys = parse_jwks(jwks_for(RSA, other), ("RS256",))
    found = keys.find("rsa-1", "RS256")
    assert found is not None and found.key.public_numbers() == RSA.private_key.public_key().public_numbers()


def test_jwks_kidless_token_needs_a_single_candidate() -> None:
    one = parse_jwks(jwks_for(RSA), ("RS256",))
    two = parse_jwks(jwks_for(RSA, make_rsa_key("rsa-2", fresh=True)), ("RS256",))
    assert one.find(None, "RS256") is not None
    assert two.find(None, "RS256") is None


def test_jwks_small_rsa_keys_are_dropped() -> None:
    with pytest.raises(JwksError):
        parse_jwks(jwks_for(make_rsa_key("small", bits=1024)), ("RS256",))


@pytest.mark.parametrize("document", [{}, {"keys": {}}, [], {"keys": []}])
def test_jwks_without_usable_keys_is_an_error(document: Any) -> None:
    with pytest.raises(JwksError):
        parse_jwks(document, ("RS256",))


# -- claims -----------------------------------------------------------------------------------------

NOW = 1_800_000_000.0


def check(claims: dict[str, Any], issuer: IssuerConfig = ISSUER, header: dict[str, Any] | None = None) -> Identity:
    return identity_from_claims(header if header is not None else {"typ": "at+jwt"}, claims, issuer, NOW)


def claims(**extra: Any) -> dict[str, Any]:
    return access_claims(now=NOW, **extra)


def test_claims_give_the_identity() -> None:
    identity = check(claims(groups=["a", "b"], azp="svc-etl-7", tenant="acme"))
    assert (identity.issuer, identity.subject, identity.audience) == (DEFAULT_ISSUER, "svc-etl-7", ("orders-api",))
    assert identity.client_id == "svc-etl-7" and identity.groups == ("a", "b")
    assert identity.expires_at == NOW + 300 and identity.claims["tenant"] == "acme"
    with pytest.raises(TypeError):
        identity.claims["tenant"] = "evil"  # type: ignore[index]


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+JWT"])
def test_typ_compare_is_media_type_aware(typ: str) -> None:
    assert check(claims(), header={"typ": typ}).subject == "svc-etl-7"


def test_typ_is_ignored_when_not_required() -> None:
    assert check(claims(), replace(ISSUER, require_typ=None), header={}).subject == "svc-etl-7"


@pytest.mark.parametrize("offset, ok", [(-29.0, True), (-30.0, False), (-31.0, False)])
def test_leeway_is_applied_once_to_exp(offset: float, ok: bool) -> None:
    token_claims = claims(exp=NOW + offset)
    if ok:
        check(token_claims)
    else:
        with pytest.raises(AuthenticationError, match="expired"):
            check(token_claims)


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["1800000000", True, None, [1], {"t": 1}])
def test_time_claims_must_be_numbers(name: str, value: Any) -> None:
    token_claims = claims()
    token_claims[name] = value
    with pytest.raises(AuthenticationError) as excinfo:
        check(token_claims)
    assert reason_of(excinfo) == "invalid_claim"


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", [-1, 10**400, 1e300, float("inf"), float("nan"), 253402300800],
                         ids=["before-epoch", "10**400", "1e300", "inf", "nan", "year-10000"])
def test_time_claims_must_be_sane_times(name: str, value: Any) -> None:
    """Before the epoch or past year 9999: an invalid claim, never an overflow or a token that never expires."""
    token_claims = claims()
    token_claims[name] = value
    with pytest.raises(AuthenticationError) as excinfo:
        check(token_claims)
    assert reason_of(excinfo) == "invalid_claim"


@pytest.mark.parametrize("literal", [b"1e400", b"-1e400", b"1.5E+309", b"NaN", b"Infinity", b"-Infinity"])
def test_number_literals_beyond_a_double_are_malformed(literal: bytes) -> None:
    payload = b'{"exp":' + literal + b"}"
    token = f"{b64url({'alg': 'RS256'})}.{b64url(payload)}.{b64url(b'sig')}"
    with pytest.raises(AuthenticationError) as excinfo:
        parse_compact_jws(token)
    assert reason_of(excinfo) == "malformed_token"


@pytest.mark.parametrize("lifetime, iat, ok", [
    (86400, True, True), (86400 + 30, True, True), (86400 + 31, True, False), (2 * 86400, False, False),
    (3600, False, True),
])
def test_tokens_live_no_longer_than_the_issuers_max_lifetime(lifetime: int, iat: bool, ok: bool) -> None:
    token_claims = claims(expires_in=lifetime, iat=int(NOW) if iat else None)
    if ok:
        check(token_claims)
    else:
        with pytest.raises(AuthenticationError) as excinfo:
            check(token_claims)
        assert reason_of(excinfo) == "token_lifetime_too_long"


def test_max_lifetime_is_per_issuer() -> None:
    short = replace(ISSUER, max_lifetime=600.0)
    check(claims(expires_in=600), short)
    with pytest.raises(AuthenticationError) as excinfo:
        check(claims(expires_in=900), short)
    assert reason_of(excinfo) == "token_lifetime_too_long"
    check(claims(expires_in=7 * 86400), replace(ISSUER, max_lifetime=7 * 86400.0))


def test_max_age_refuses_old_tokens_and_needs_iat() -> None:
    issuer = replace(ISSUER, max_age=600.0)
    check(claims(iat=int(NOW - 600)), issuer)
    with pytest.raises(AuthenticationError) as excinfo:
        check(claims(iat=int(NOW - 700), exp=NOW + 60), issuer)
    assert reason_of(excinfo) == "token_too_old"
    with pytest.raises(AuthenticationError) as excinfo:
        check(claims(iat=None), issuer)
    assert reason_of(excinfo) == "missing_claim"


@pytest.mark.parametrize("aud, reason", [
    (["other", "orders-api"], None), ("other", "bad_audience"), ([], "invalid_claim"),
    (["orders-api", 7], "invalid_claim"), (None, "missing_claim"), ({"orders-api": 1}, "invalid_claim"),
])
def test_audience_is_any_of(aud: Any, reason: str | None) -> None:
    token_claims = claims()
    token_claims["aud"] = aud
    if token_claims["aud"] is None:
        del token_claims["aud"]
    if reason is None:
        assert check(token_claims).audience == tuple(aud)
    else:
        with pytest.raises(AuthenticationError) as excinfo:
            check(token_claims)
        assert reason_of(excinfo) == reason


@pytest.mark.parametrize("sub, reason", [(None, "missing_claim"), ("", "invalid_claim"), (7, "invalid_claim")])
def test_subject_is_a_non_empty_string(sub: Any, reason: str) -> None:
    with pytest.raises(AuthenticationError) as excinfo:
        check(claims(subject=sub))
    assert reason_of(excinfo) == reason


@pytest.mark.parametrize("value, groups", [
    (["a", "b"], ("a", "b")), ("solo", ("solo",)), (None, ()), ([], ()),
])
def test_groups_shapes(value: Any, groups: tuple[str, ...]) -> None:
    assert check(claims(groups=value)).groups == groups


@pytest.mark.parametrize("value", [["contractors", 1], [None], {"a": 1}, 7, True, [["nested"]]])
def test_a_malformed_groups_claim_is_refused_not_emptied(value: Any) -> None:
    """Emptying it would drop the very group a deny rule names (groups: [contractors]) while a
    subject-based allow rule still matched."""
    with pytest.raises(AuthenticationError) as excinfo:
        check(claims(groups=value))
    assert reason_of(excinfo) == "invalid_claim"


def test_too_many_groups_is_refused_not_truncated() -> None:
    check(claims(groups=[f"g{i}" for i in range(MAX_GROUPS)]))
    with pytest.raises(AuthenticationError) as excinfo:
        check(claims(groups=[f"g{i}" for i in range(MAX_GROUPS + 1)]))
    assert reason_of(excinfo) == "too_many_groups"


def test_client_id_from_azp_or_client_id() -> None:
    issuer = replace(ISSUER, allowed_client_ids=("svc-etl-7",))
    assert check(claims(client_id=None, azp="svc-etl-7"), issuer).client_id == "svc-etl-7"
    assert check(claims(), issuer).client_id == "svc-etl-7"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"client_id": None}, "bad_client"), ({"azp": "other"}, "invalid_claim"),
        ({"client_id": ["svc-etl-7"]}, "invalid_claim")]
    for bad, reason in cases:
        with pytest.raises(AuthenticationError) as excinfo:
            check(claims(**bad), issuer)
        assert reason_of(excinfo) == reason


def test_error_messages_never_echo_claim_values() -> None:
    secret_sub = "do-not-echo-me"
    for bad in (claims(subject=secret_sub, aud="wrong-aud-value"), claims(subject=secret_sub, exp="soon")):
        with pytest.raises(AuthenticationError) as excinfo:
            check(bad)
        assert secret_sub not in str(excinfo.value) and "wrong-aud-value" not in str(excinfo.value)


# -- verifier configuration -------------------------------------------------------------------------

@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.mark.parametrize("bad", [
    {"audiences": ()}, {"algorithms": ()}, {"algorithms": ("RS256", "HS256")}, {"algorithms": ("none",)},
])
async def test_unsafe_issuer_config_is_refused(session: aiohttp.ClientSession, bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        TokenVerifier([replace(ISSUER, **bad)], session, Metrics())


# -- verified-token cache ---------------------------------------------------------------------------

Factory = Callable[..., TokenVerifier]


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks_for(RSA, EC)))
    return path


@pytest.fixture
async def verifier_factory(session: aiohttp.ClientSession, jwks_file: Path) -> AsyncIterator[Factory]:
    made: list[TokenVerifier] = []

    def make(clock: FakeClock, metrics: Metrics, **overrides: Any) -> TokenVerifier:
        issuer = replace(ISSUER, jwks_file=jwks_file, refresh_interval=3600.0, **overrides)
        verifier = TokenVerifier([issuer], session, metrics, clock=clock)
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        await verifier.close()


def cache_count(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value("idgate_token_cache_total", {"result": result})
    return value or 0.0


async def test_cache_hit_returns_the_verified_identity_without_reverifying(verifier_factory: Factory) -> None:
    clock, metrics = FakeClock(), Metrics()
    verifier = verifier_factory(clock, metrics)
    await verifier.start()
    token = sign_token(access_claims(now=clock.now), RSA)
    first = await verifier.verify(token)
    second = await verifier.verify(token)
    assert second is first                       # the very object: nothing was parsed or verified again
    assert (cache_count(metrics, "miss"), cache_count(metrics, "hit")) == (1, 1)


async def test_cache_hit_is_microseconds(verifier_factory: Factory) -> None:
    clock, metrics = FakeClock(), Metrics()
    verifier = verifier_factory(clock, metrics)
    await verifier.start()
    token = sign_token(access_claims(now=clock.now), RSA)
    await verifier.verify(token)
    rounds = 20000
    started = time.perf_counter()
    for _ in range(rounds):
        await verifier.verify(token)
    per_hit = (time.perf_counter() - started) / rounds
    assert per_hit < 20e-6, f"cache hit took {per_hit * 1e6:.1f} µs"


async def test_cache_entry_ends_at_token_expiry(verifier_factory: Factory) -> None:
    clock, metrics = FakeClock(), Metrics()
    verifier = verifier_factory(clock, metrics, leeway=0.0)
    await verifier.start()
    token = sign_token(access_claims(now=clock.now, expires_in=60), RSA)
    await verifier.verify(token)
    clock.advance(60)
    with pytest.raises(AuthenticationError) as excinfo:
        await verifier.verify(token)
    assert reason_of(excinfo) == "token_expired"
    assert cache_count(metrics, "hit") == 0


async def test_cache_entry_life_is_bounded_for_long_tokens(verifier_factory: Factory) -> None:
    clock, metrics = FakeClock(), Metrics()
    verifier = verifier_factory(clock, metrics)
    await verifier.start()
    token = sign_token(access_claims(now=clock.now, expires_in=86400), RSA)
    first = await verifier.verify(token)
    clock.advance(CACHE_MAX_TTL - 1)
    assert await verifier.verify(token) is first
    clock.advance(2)
    again = await verifier.verify(token)
    assert again is not first and again == first
    assert (cache_count(metrics, "miss"), cache_count(metrics, "hit")) == (2, 1)


async def test_cache_entry_ends_at_max_age(verifier_factory: Factory) -> None:
    clock, metrics = FakeClock(), Metrics()
    verifier = verifier_factory(clock, metrics, max_age=100.0, leeway=0.0)
    await verifier.start()
    token = sign_token(access_claims(now=clock.now, expires_in=3600), RSA)
    await verifier.verify(token)
    clock.advance(101)
    with pytest.raises(AuthenticationError) as excinfo:
        await verifier.verify(token)
    assert reason_of(excinfo) == "token_too_old"


async def test_withdrawn_key_empties_the_cache(verifier_factory: Factory, jwks_file: Path) -> None:
    clock, metrics = FakeClock(), Metrics()
    verifier = verifier_factory(clock, metrics, unknown_kid_min_interval=0.0)
    await verifier.start()
    token = sign_token(access_claims(now=clock.now), RSA)
    await verifier.verify(token)
    # The issuer drops rsa-1 and adds a new key; a token for the new kid triggers the refetch.
    newcomer: SigningKey = make_rsa_key("rsa-2", fresh=True)
    jwks_file.write_text(json.dumps(jwks_for(newcomer, EC)))
    await verifier.verify(sign_token(access_claims(now=clock.now), newcomer))
    with pytest.raises(AuthenticationError) as excinfo:
        await verifier.verify(token)
    assert reason_of(excinfo) == "unknown_kid"


async def test_failures_are_not_cached(verifier_factory: Factory) -> None:
    clock, metrics = FakeClock(), Metrics()
    verifier = verifier_factory(clock, metrics)
    await verifier.start()
    token = sign_token(access_claims(now=clock.now, nbf=clock.now + 120), RSA)
    for _ in range(2):
        with pytest.raises(AuthenticationError):
            await verifier.verify(token)
    clock.advance(120)
    assert (await verifier.verify(token)).subject == "svc-etl-7"
    assert cache_count(metrics, "hit") == 0


async def test_es256_tokens_verify(verifier_factory: Factory) -> None:
    clock = FakeClock()
    verifier = verifier_factory(clock, Metrics())
    await verifier.start()
    assert (await verifier.verify(sign_token(access_claims(now=clock.now), EC))).subject == "svc-etl-7"


async def test_status_reports_keys_and_errors(verifier_factory: Factory, jwks_file: Path) -> None:
    clock = FakeClock()
    verifier = verifier_factory(clock, Metrics())
    await verifier.start()
    status = verifier.status()[DEFAULT_ISSUER]
    assert status["ready"] and status["keys"] == 2 and status["last_success"] == clock.now
    assert status["last_error"] is None and verifier.ready()
    jwks_file.unlink()
    broken = verifier_factory(clock, Metrics())
    await broken.start()
    assert not broken.ready()
    assert broken.status()[DEFAULT_ISSUER]["last_error"] == "cannot read JWKS file: No such file or directory"


def fetch_count(metrics: Metrics, result: str = "ok") -> float:
    value = metrics.registry.get_sample_value(
        "idgate_jwks_fetches_total", {"issuer": DEFAULT_ISSUER, "result": result})
    return value or 0.0


async def test_concurrent_tokens_with_a_new_kid_share_one_refetch(verifier_factory: Factory, jwks_file: Path) -> None:
    clock, metrics = FakeClock(), Metrics()
    verifier = verifier_factory(clock, metrics)
    await verifier.start()
    rotated = make_rsa_key("rsa-new", fresh=True)
    jwks_file.write_text(json.dumps(jwks_for(rotated, RSA, EC)))
    tokens = [sign_token(access_claims(now=clock.now, jti=str(i)), rotated) for i in range(20)]
    identities = await asyncio.gather(*(verifier.verify(t) for t in tokens))
    assert all(i.subject == "svc-etl-7" for i in identities)  # every waiter got the refetched keys
    assert fetch_count(metrics) == 2
