"""The token attacks of test_token_attacks.py, sent through the reverse proxy: each is a 401 with a
challenge, the upstream sees nothing, and the denial is on the audit log with its reason."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.factories import access_claims, forge_token, hmac_token, jwks_for, make_rsa_key, sign_token

KEY = make_rsa_key("rsa-proxy")

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
