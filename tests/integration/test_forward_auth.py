"""nginx auth_request / Traefik forwardAuth surface."""

from __future__ import annotations

import pytest

AUTH = "/.idgate/auth"


@pytest.fixture
async def trusted_stack(make_stack):
    return await make_stack(trusted_proxies=["127.0.0.1/32"])


async def ask(stack, headers):
    return await stack.http.get(stack.idgate.url + AUTH, headers={"Host": "idgate.local", **headers})


async def test_nginx_style_allow_returns_identity_headers(trusted_stack):
    s = trusted_stack
    response = await ask(s, {"X-Original-URI": "/v1/orders/7?x=1", "X-Original-Method": "GET",
                             "X-Forwarded-Host": "orders.internal", "Authorization": f"Bearer {s.etl_token()}"})
    assert response.status == 200
    assert response.headers["X-Idgate-Subject"] == "svc-etl-7"
    assert response.headers["X-Idgate-Assertion"].count(".") == 2
    decision = (await s.decisions())[0]
    assert decision["surface"] == "forward_auth" and decision["rule"] == "etl-read-orders"
    assert s.upstream.received == []  # forward auth never proxies


async def test_traefik_style_deny_is_403(trusted_stack):
    s = trusted_stack
    response = await ask(s, {"X-Forwarded-Uri": "/v1/orders/7", "X-Forwarded-Method": "DELETE",
                             "X-Forwarded-Host": "orders.internal", "Authorization": f"Bearer {s.etl_token()}"})
    assert response.status == 403
    assert "X-Idgate-Subject" not in response.headers


async def test_forward_auth_path_tricks_are_refused(trusted_stack):
    """nginx forwards its own copy of the target: a spelling that idgate would normalize is refused
    before any decision, since the upstream may resolve it differently."""
    s = trusted_stack
    response = await ask(s, {"X-Original-URI": "/v1/orders/../../admin/x", "X-Original-Method": "GET",
                             "X-Forwarded-Host": "orders.internal", "Authorization": f"Bearer {s.etl_token()}"})
    assert response.status == 400
    [record] = await s.decisions()
    assert record["reasons"] == ["non_canonical_path"] and record["identity"] is None
    assert record["target"]["raw_path"] == "/v1/orders/../../admin/x"


async def test_missing_token_is_401(trusted_stack):
    s = trusted_stack
    response = await ask(s, {"X-Original-URI": "/v1/orders/7", "X-Original-Method": "GET", "X-Forwarded-Host": "orders.internal"})
    assert response.status == 401
    assert "WWW-Authenticate" in response.headers


async def test_untrusted_peer_cannot_ask(stack):
    response = await ask(stack, {"X-Original-URI": "/v1/orders/7", "X-Original-Method": "GET",
                                 "X-Forwarded-Host": "orders.internal", "Authorization": f"Bearer {stack.etl_token()}"})
    assert response.status == 403
    assert (await stack.decisions())[0]["reasons"] == ["untrusted_peer"]


async def test_conflicting_original_headers_are_refused(trusted_stack):
    s = trusted_stack
    response = await ask(s, {"X-Original-URI": "/v1/orders/7", "X-Forwarded-Uri": "/admin", "X-Original-Method": "GET",
                             "X-Forwarded-Host": "orders.internal", "Authorization": f"Bearer {s.etl_token()}"})
    assert response.status == 400
