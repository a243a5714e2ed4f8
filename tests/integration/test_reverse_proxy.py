"""The reverse-proxy surface against a real issuer (development issuer over HTTP) and a real upstream."""

from __future__ import annotations

import asyncio

import aiohttp
import jwt

from tests.harness.processes import HOST
from tests.harness.servers import refused_port


async def test_allowed_request_reaches_upstream_with_identity_and_is_audited(make_stack):
    stack = await make_stack(trusted_proxies=["127.0.0.1/32"])  # so the caller's request id is kept
    response = await stack.get("/v1/orders/7?x=1", token=stack.etl_token(), headers={"X-Request-Id": "trace-12345678"})
    assert response.status == 200
    assert response.headers["X-Request-Id"] == "trace-12345678"
    [received] = stack.upstream.received
    assert received.raw_path == "/v1/orders/7?x=1"
    assert received.header("X-Idgate-Subject") == ["svc-etl-7"]
    assert received.header("X-Idgate-Groups") == ["data-eng"]
    assert received.header("Authorization") == []  # the caller's token stays at idgate
    assert received.header("X-Request-Id") == ["trace-12345678"]
    # The assertion verifies with the JWKS on the admin listener, for this route only.
    async with stack.http.get(stack.idgate.admin_url + "/.well-known/jwks.json") as jwks_response:
        key = jwt.PyJWK((await jwks_response.json())["keys"][0]).key
    claims = jwt.decode(received.header("X-Idgate-Assertion")[0], key, algorithms=["ES256"], audience="route:orders")
    assert claims["sub"] == "svc-etl-7"
    records = await stack.idgate.audit_records()
    assert [r["event"] for r in records] == ["decision", "outcome"]
    decision = records[0]
    assert decision["decision"] == "allow" and decision["rule"] == "etl-read-orders"
    assert decision["identity"]["sub"] == "svc-etl-7" and decision["target"]["path"] == "/v1/orders/7"
    assert records[1]["status"] == 200 and records[1]["request_id"] == "trace-12345678"


async def test_request_id_from_an_untrusted_client_is_replaced(stack):
    response = await stack.get("/v1/orders/7", token=stack.etl_token(), headers={"X-Request-Id": "collide-12345678"})
    minted = response.headers["X-Request-Id"]
    assert minted != "collide-12345678"
    assert stack.upstream.received[0].header("X-Request-Id") == [minted]
    assert (await stack.decisions())[0]["request_id"] == minted


async def test_redirect_to_the_upstream_address_is_made_relative(stack):
    response = await stack.get("/v1/orders/__redirect", token=stack.etl_token(), allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == "/v1/orders/elsewhere"
    assert response.headers["Server"] == "idgate"


async def test_identity_without_a_rule_is_denied_before_the_upstream(stack):
    response = await stack.get("/v1/orders/7", token=stack.web_token())
    assert response.status == 403
    body = await response.json()
    assert body["code"] == "forbidden" and body["request_id"] == response.headers["X-Request-Id"]
    assert stack.upstream.received == []
    [decision] = (await stack.decisions())
    assert decision["decision"] == "deny" and decision["reasons"] == ["no_matching_rule"]
    assert decision["identity"]["sub"] == "svc-web-1"


async def test_missing_token_is_401_with_challenge(stack):
    response = await stack.get("/v1/orders/7")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="idgate"')
    assert stack.upstream.received == []
    assert (await stack.decisions())[0]["reasons"] == ["missing_token"]


async def test_deny_rule_wins_over_allow(stack):
    response = await stack.get("/admin/users", token=stack.etl_token())
    assert response.status == 403
    assert stack.upstream.received == []
    assert (await stack.decisions())[0]["rule"] == "nobody-touches-admin"


async def test_upload_and_download_stream_through(stack):
    payload = b"y" * (3 * 1024 * 1024)
    response = await stack.get("/v1/orders/import", token=stack.etl_token(), method="POST", data=payload)
    # The example policy grants svc-etl-7 GET/HEAD on orders: a POST is denied.
    assert response.status == 403
    response = await stack.get("/v1/reports/__big?bytes=5000000", token=stack.etl_token(), host="reports.internal")
    assert response.status == 200
    assert len(await response.read()) == 5_000_000
    outcome = [r for r in await stack.idgate.audit_records() if r["event"] == "outcome"][-1]
    assert outcome["bytes_out"] == 5_000_000


async def test_body_over_the_route_limit_is_413_before_the_upstream(make_stack):
    stack = await make_stack(orders_route={"max_body_bytes": 1024})
    response = await stack.get("/v1/orders/7", token=stack.etl_token(), data=b"z" * 2048)
    assert response.status == 413
    assert stack.upstream.received == []
    assert (await stack.decisions())[0]["reasons"] == ["body_too_large"]


async def test_upstream_down_is_502_without_internals(make_stack):
    with refused_port() as dead_port:
        stack = await make_stack(extra_routes=[{
            "name": "dead", "upstream": f"http://{HOST}:{dead_port}", "hosts": ["orders.internal"],
            "path_prefix": "/v1/orders/dead"}])
        response = await stack.get("/v1/orders/dead/7", token=stack.etl_token())
    assert response.status == 502
    text = await response.text()
    assert str(dead_port) not in text and HOST not in text
    assert [r for r in await stack.idgate.audit_records() if r["event"] == "outcome"][-1]["error"] == "upstream_failed"


async def test_slow_upstream_is_504(make_stack):
    stack = await make_stack(extra_routes=[{
        "name": "slow", "upstream": "UPSTREAM", "hosts": ["orders.internal"],
        "path_prefix": "/v1/orders/__hang", "read_timeout": 0.3}])
    response = await stack.get("/v1/orders/__hang/slow", token=stack.etl_token())
    assert response.status == 504
    assert (await response.json())["code"] == "gateway_timeout"
    assert [r for r in await stack.idgate.audit_records() if r["event"] == "outcome"][-1]["error"] == "upstream_timeout"


async def test_websocket_upgrade_is_authorized_then_relayed(make_stack):
    stack = await make_stack(orders_route={"websocket": True})
    async with stack.http.ws_connect(stack.idgate.url + "/v1/orders/stream", headers={
            "Host": "orders.internal", "Authorization": f"Bearer {stack.etl_token()}"}) as ws:
        await ws.send_str("hello")
        message = await asyncio.wait_for(ws.receive(), timeout=5)
        assert message.data == "echo:hello"
    assert stack.upstream.received[0].header("X-Idgate-Subject") == ["svc-etl-7"]


async def test_websocket_upgrade_without_token_is_refused(make_stack):
    stack = await make_stack(orders_route={"websocket": True})
    try:
        await stack.http.ws_connect(stack.idgate.url + "/v1/orders/stream", headers={"Host": "orders.internal"})
        raise AssertionError("upgrade without a token must fail")
    except aiohttp.WSServerHandshakeError as err:
        assert err.status == 401
    assert stack.upstream.received == []
    assert (await stack.decisions())[0]["reasons"] == ["missing_token"]
