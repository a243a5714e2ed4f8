"""Requests through a real Envoy to a real upstream, Envoy asking idgate over HTTP or gRPC ext_authz
(every test runs in both modes): allow with identity headers, 401 and 403, fail closed."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from proxy.dev.issuer import DemoIdentity, DevIssuer
from tests.harness.servers import raw_http, refused_port


async def test_allowed_request_reaches_the_upstream_with_identity(envoy_stack):
    s = envoy_stack
    response = await s.get("/v1/orders/7?x=1", token=s.etl_token())
    assert response.status == 200, await response.text()
    [received] = s.upstream.received
    assert received.raw_path == "/v1/orders/7?x=1"
    assert received.header("X-Idgate-Subject") == ["svc-etl-7"]
    assert received.header("X-Idgate-Groups") == ["data-eng"]
    assert received.header("X-Idgate-Rule") == ["etl-read-orders"]
    assert received.header("X-Idgate-Assertion")[0].count(".") == 2
    assert received.header("Authorization") == []          # the caller's credential stops at Envoy
    [decision] = await s.decisions()
    assert decision["surface"] == s.surface and decision["decision"] == "allow"
    assert decision["rule"] == "etl-read-orders"
    assert decision["target"] == {"method": "GET", "host": "orders.internal", "path": "/v1/orders/7"}
    assert decision["client"]["addr"] == "127.0.0.1"
    # One request id from Envoy to the upstream and the audit record.
    assert decision["request_id"] == received.header("X-Request-Id")[0]


async def test_head_is_authorized_as_head_and_post_is_denied(envoy_stack):
    s = envoy_stack
    assert (await s.get("/v1/orders/7", token=s.etl_token(), method="HEAD")).status == 200
    response = await s.get("/v1/orders/7", token=s.etl_token(), method="POST", data=b"x" * 100)
    assert response.status == 403
    assert [d["target"]["method"] for d in await s.decisions()] == ["HEAD", "POST"]
    assert [r.method for r in s.upstream.received] == ["HEAD"]


async def test_missing_token_is_401_with_www_authenticate(envoy_stack):
    s = envoy_stack
    response = await s.get("/v1/orders/7")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="idgate", error="invalid_request"'
    body = await response.json(content_type=None)
    assert body["code"] == "unauthenticated" and body["request_id"]
    assert s.upstream.received == []
    [decision] = await s.decisions()
    assert decision["decision"] == "deny" and decision["reasons"] == ["missing_token"]


async def test_invalid_token_is_401_invalid_token(envoy_stack):
    s = envoy_stack
    response = await s.get("/v1/orders/7", token=s.etl_token()[:-4] + "AAAA")
    assert response.status == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert s.upstream.received == []


async def test_policy_denial_is_403_with_json_body(envoy_stack):
    s = envoy_stack
    response = await s.get("/v1/orders/7", token=s.web_token())
    assert response.status == 403
    assert (await response.json(content_type=None))["code"] == "forbidden"
    assert "X-Idgate-Subject" not in response.headers
    assert s.upstream.received == []
    [decision] = await s.decisions()
    assert decision["identity"]["sub"] == "svc-web-1" and decision["reasons"] == ["no_matching_rule"]


async def test_deny_rule_wins_through_envoy(envoy_stack):
    s = envoy_stack
    response = await s.get("/admin/users", token=s.etl_token())
    assert response.status == 403
    assert (await s.decisions())[0]["rule"] == "nobody-touches-admin"


async def test_client_address_is_envoys_view_not_the_clients_claim(envoy_stack):
    s = envoy_stack
    spoof = {"X-Forwarded-For": "10.9.9.9", "X-Envoy-External-Address": "10.9.9.9", "X-Real-IP": "10.9.9.9"}
    response = await s.get("/v1/orders/7", token=s.etl_token(), headers=spoof)
    assert response.status == 200
    assert (await s.decisions())[0]["client"]["addr"] == "127.0.0.1"


async def test_forward_token_keeps_the_callers_authorization(make_envoy_stack):
    s = await make_envoy_stack(ext_authz={"http": {}, "grpc": {"host": "127.0.0.1", "port": 0}, "forward_token": True})
    token = s.etl_token()
    response = await s.get("/v1/orders/7", token=token)
    assert response.status == 200
    assert s.upstream.received[0].header("Authorization") == [f"Bearer {token}"]


async def test_health_route_skips_the_check_but_only_exactly(envoy_stack):
    s = envoy_stack
    assert (await s.get("/healthz")).status == 200
    assert [r.raw_path for r in s.upstream.received] == ["/healthz"]
    assert await s.decisions() == []
    # A prefix route would have skipped the check here; the exact one sends it to idgate.
    response = await s.get("/healthz/../admin", token=s.etl_token())
    assert response.status == 403
    assert len(s.upstream.received) == 1


async def test_access_log_shows_rule_and_subject(envoy_stack):
    s = envoy_stack
    assert (await s.get("/v1/orders/7", token=s.etl_token())).status == 200
    line = await s.envoy.output.line_with("rule=etl-read-orders")
    assert "subject=svc-etl-7" in line and " 200 " in line


async def test_idgate_down_means_envoy_denies(make_envoy_stack):
    with refused_port() as port:   # nothing listens there, and nothing can start to
        s = await make_envoy_stack(idgate_port=port)
        response = await s.get("/v1/orders/7", token=s.etl_token())
    assert response.status == 503
    assert s.upstream.received == []


async def test_idgate_stopping_mid_run_means_envoy_denies(envoy_stack):
    s = envoy_stack
    assert (await s.get("/v1/orders/7", token=s.etl_token())).status == 200
    await s.idgate.listeners.stop()
    response = await s.get("/v1/orders/7", token=s.etl_token())
    assert response.status == 503
    assert len(s.upstream.received) == 1


async def test_idgate_slow_means_envoys_timeout_denies(make_envoy_stack):
    s = await make_envoy_stack(envoy_timeout="0.3s")
    # A token signed with a key the issuer has not published: idgate refetches the issuer's keys,
    # and the key server now holds the request, so idgate's answer takes longer than Envoy waits.
    rotated = DevIssuer(s.issuer.issuer.issuer_url, "orders-api").mint(DemoIdentity("svc-etl-7", ("data-eng",), {"tenant": "acme"}))
    s.jwks.stalled = True
    started = asyncio.get_running_loop().time()
    response = await s.get("/v1/orders/7", token=rotated)
    assert response.status == 503
    assert asyncio.get_running_loop().time() - started < 5
    assert s.upstream.received == []


@pytest.mark.parametrize("target,status", [
    # allow_absolute_url: false leaves the whole URL as the path, which no route matches.
    ("http://reports.internal/v1/reports/x", 404),
    ("/v1/orders#/../admin", 400),
])
async def test_request_lines_envoy_refuses_itself(envoy_stack, target, status):
    """Request lines the spine refuses with 400 that Envoy refuses before any check: nothing moves."""
    s = envoy_stack
    request = f"GET {target} HTTP/1.1\r\nHost: orders.internal\r\nAuthorization: Bearer {s.etl_token()}\r\nConnection: close\r\n\r\n"
    response = await raw_http(s.envoy.port, request.encode())
    assert response.status == status
    assert s.upstream.received == []
    assert await s.decisions() == []


async def test_many_requests_on_one_connection_each_decided(envoy_stack):
    s = envoy_stack
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        for token, expected in [(s.etl_token(), 200), (s.web_token(), 403), (None, 401), (s.etl_token(), 200)]:
            headers = {"Host": "orders.internal", **({"Authorization": f"Bearer {token}"} if token else {})}
            async with http.get(s.envoy.url + "/v1/orders/7", headers=headers) as response:
                assert response.status == expected
    assert [d["decision"] for d in await s.decisions()] == ["allow", "deny", "deny", "allow"]
