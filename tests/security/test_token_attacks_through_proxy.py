"""The token attacks of test_token_attacks.py, sent through the reverse proxy: each is a 401 with a
challenge, the upstream sees nothing, and the denial is on the audit log with its reason."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from tests.factories import access_claims, forge_token, hmac_token, jwks_for, make_rsa_key, sign_token

KEY = make_rsa_key("rsa-proxy")
DAY = 86400


def with_exp(iss: str, literal: str, claim: str = "exp") -> bytes:
    """Valid claims whose `claim` is the JSON number literal given, exactly as written."""
    claims = access_claims(issuer=iss, groups=["data-eng"], tenant="acme")
    claims[claim] = "@"
    return json.dumps(claims, separators=(",", ":")).encode().replace(b'"@"', literal.encode())

Attack = Callable[[str], str]  # issuer URL -> token

ATTACKS: dict[str, tuple[Attack, str]] = {
    "alg_none": (lambda iss: forge_token({"alg": "none", "typ": "at+jwt"}, access_claims(issuer=iss, groups=["data-eng"], tenant="acme")),
                 "alg_not_allowed"),
    "alg_NoNe": (lambda iss: forge_token({"alg": "NoNe", "typ": "at+jwt"}, access_claims(issuer=iss)), "alg_not_allowed"),
    "hs256_with_public_key": (lambda iss: hmac_token({"alg": "HS256", "typ": "at+jwt", "kid": KEY.kid},
                                                     access_claims(issuer=iss), KEY.public_pem()), "alg_not_allowed"),
    "expired": (lambda iss: sign_token(access_claims(issuer=iss, expires_in=-3600), KEY), "token_expired"),
    "not_yet_valid": (lambda iss: sign_token(access_claims(issuer=iss, nbf=int(2e9)), KEY), "token_not_yet_valid"),
    "wrong_audience": (lambda iss: sign_token(access_claims(issuer=iss, audience="billing-api"), KEY), "bad_audience"),
    "issuer_trailing_slash": (lambda iss: sign_token(access_claims(issuer=iss + "/"), KEY), "unknown_issuer"),
    "issuer_prefix": (lambda iss: sign_token(access_claims(issuer=iss[:-1]), KEY), "unknown_issuer"),
    "id_token_shaped": (lambda iss: sign_token(access_claims(issuer=iss), KEY, typ=None), "wrong_token_type"),
    "unknown_kid": (lambda iss: sign_token(access_claims(issuer=iss), KEY, kid="not-in-jwks"), "unknown_kid"),
    "oversized": (lambda iss: sign_token(access_claims(issuer=iss, pad="x" * 10000), KEY), "token_too_large"),
    "malformed_base64": (lambda iss: "e30.e30.abc+def", "malformed_token"),
    "not_a_token68": (lambda iss: "e30.e30.***", "malformed_authorization"),
    "payload_not_json": (lambda iss: forge_token({"alg": "RS256"}, "not json"), "malformed_token"),
    # Numeric claims: a literal beyond a double is malformed; an integer or a time beyond year 9999 (or
    # before the epoch) is an invalid claim, never a 500 and never a token that does not expire.
    "exp_overflows_a_double": (lambda iss: sign_token(with_exp(iss, "1e400"), KEY), "malformed_token"),
    "exp_negative_overflow": (lambda iss: sign_token(with_exp(iss, "-1e400"), KEY), "malformed_token"),
    "exp_huge_integer": (lambda iss: sign_token(with_exp(iss, "9" * 400), KEY), "invalid_claim"),
    "exp_past_year_9999": (lambda iss: sign_token(with_exp(iss, "1e300"), KEY), "invalid_claim"),
    "nbf_huge_integer": (lambda iss: sign_token(with_exp(iss, "1" + "0" * 30, "nbf"), KEY), "invalid_claim"),
    "iat_before_the_epoch": (lambda iss: sign_token(with_exp(iss, "-5", "iat"), KEY), "invalid_claim"),
    "iat_overflows_a_double": (lambda iss: sign_token(with_exp(iss, "1.5e999", "iat"), KEY), "malformed_token"),
    "exp_nan": (lambda iss: sign_token(with_exp(iss, "NaN"), KEY), "malformed_token"),
    # A default maximum lifetime (24 h, `max_lifetime` per issuer): from iat, or from now without one.
    "lifetime_over_a_day": (lambda iss: sign_token(access_claims(issuer=iss, expires_in=2 * DAY), KEY),
                            "token_lifetime_too_long"),
    "lifetime_over_a_day_without_iat": (lambda iss: sign_token(access_claims(issuer=iss, expires_in=2 * DAY, iat=None),
                                                               KEY), "token_lifetime_too_long"),
    "issued_a_year_ago_valid_for_a_year_more": (
        lambda iss: sign_token(access_claims(issuer=iss, now=time.time() - 365 * DAY, expires_in=730 * DAY), KEY),
        "token_lifetime_too_long"),
}


@pytest.fixture
async def jwks_stack(make_stack, tmp_path):
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(jwks_for(KEY)))
    return await make_stack(issuer_extra={"jwks_file": str(jwks), "require_typ": "at+jwt",
                                          "unknown_kid_min_interval": 3600})


async def test_an_honest_token_signed_by_the_same_key_passes(jwks_stack):
    iss = jwks_stack.issuer.issuer.issuer_url
    token = sign_token(access_claims(issuer=iss, groups=["data-eng"], tenant="acme"), KEY)
    assert (await jwks_stack.get("/v1/orders/7", token=token)).status == 200


@pytest.mark.parametrize("name", sorted(ATTACKS))
async def test_bad_token_is_refused_before_the_upstream(jwks_stack, name):
    attack, reason = ATTACKS[name]
    response = await jwks_stack.get("/v1/orders/7", token=attack(jwks_stack.issuer.issuer.issuer_url))
    assert response.status in (400, 401)
    if response.status == 401:
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    body = await response.text()
    assert "eyJ" not in body  # the token is never echoed
    assert jwks_stack.upstream.received == []
    [decision] = (await jwks_stack.decisions())
    assert decision["decision"] == "deny" and decision["reasons"] == [reason]
    assert "eyJ" not in jwks_stack.idgate.services.config.audit.path.read_text()
