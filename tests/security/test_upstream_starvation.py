"""One identity cannot starve the upstream pool, and a WebSocket does not outlive its authorization:
per-route connection limits with a bounded, audited wait, and WebSockets closed when idle, at the
route's maximum lifetime, or when the token that authorized them expires."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import WSMsgType

from proxy.dev.issuer import DemoIdentity

WS_ROUTE = {"websocket": True, "max_connections": 2, "pool_timeout": 0.2}


def auth(token: str, host: str = "orders.internal") -> dict[str, str]:
    return {"Host": host, "Authorization": f"Bearer {token}"}


async def outcomes(stack) -> list[dict]:
    return [r for r in await stack.idgate.audit_records() if r["event"] == "outcome"]


async def test_idle_websockets_of_one_identity_cannot_take_every_connection(make_stack):
    stack = await make_stack(orders_route=WS_ROUTE)
    token = stack.etl_token()
    url = stack.idgate.url + "/v1/orders/stream"
    held = [await stack.http.ws_connect(url, headers=auth(token)) for _ in range(2)]
    try:
        started = time.monotonic()
        response = await stack.get("/v1/orders/7", token=token)
        assert response.status == 503 and (await response.json())["code"] == "unavailable"
        assert time.monotonic() - started < 2          # answered after pool_timeout, not parked
        # Another route has connections of its own.
        assert (await stack.get("/v1/reports/1", token=token, host="reports.internal")).status == 200
    finally:
        for ws in held:
            await ws.close()
    busy = [r for r in await outcomes(stack) if r["status"] == 503]
    assert [(r["rule"], r["error"]) for r in busy] == [("etl-read-orders", "upstream_busy")]
    # A released connection serves the next request.
    assert (await stack.get("/v1/orders/7", token=token)).status == 200


async def test_a_slow_upstream_holds_its_routes_connections_only(make_stack):
    stack = await make_stack(orders_route={"max_connections": 1, "pool_timeout": 0.2})
    token = stack.etl_token()
    hanging = asyncio.create_task(stack.get("/v1/orders/__hang/1", token=token))
    await stack.upstream.started.wait()             # it holds the route's one connection now
    response = await stack.get("/v1/orders/7", token=token)
    assert response.status == 503
    assert (await stack.get("/v1/reports/1", token=token, host="reports.internal")).status == 200
    stack.upstream.release.set()
    assert (await hanging).status == 200


async def test_an_idle_websocket_is_closed_with_its_reason(make_stack):
    stack = await make_stack(orders_route={"websocket": True, "websocket_idle_timeout": 0.3})
    async with stack.http.ws_connect(stack.idgate.url + "/v1/orders/stream", headers=auth(stack.etl_token())) as ws:
        message = await asyncio.wait_for(ws.receive(), 5)
        assert message.type == WSMsgType.CLOSE and ws.close_code == 1001
    await stack.idgate.settled()
    [outcome] = await outcomes(stack)
    assert (outcome["status"], outcome["error"]) == (101, "websocket_idle")


async def test_an_active_websocket_ends_at_the_routes_maximum_lifetime(make_stack):
    stack = await make_stack(orders_route={"websocket": True, "websocket_max_lifetime": 0.5,
                                           "websocket_idle_timeout": 60})
    async with stack.http.ws_connect(stack.idgate.url + "/v1/orders/stream", headers=auth(stack.etl_token())) as ws:
        sent = 0
        async with asyncio.timeout(5):              # keep it busy: idleness is not what ends it
            while True:
                await ws.send_str(f"m{sent}")
                sent += 1
                if (await ws.receive()).type == WSMsgType.CLOSE:
                    break
        assert ws.close_code == 1001 and sent > 1
    await stack.idgate.settled()
    assert (await outcomes(stack))[-1]["error"] == "websocket_max_lifetime"


async def test_a_websocket_is_closed_when_the_token_that_authorized_it_expires(make_stack):
    stack = await make_stack(orders_route={"websocket": True})
    token = stack.issuer.issuer.mint(DemoIdentity("svc-etl-7", ("data-eng",), {"tenant": "acme"}), lifetime=1)
    started = time.monotonic()
    async with stack.http.ws_connect(stack.idgate.url + "/v1/orders/stream", headers=auth(token)) as ws:
        message = await asyncio.wait_for(ws.receive(), 5)
        assert message.type == WSMsgType.CLOSE and ws.close_code == 1008
        assert ws.close_code == 1008
    assert time.monotonic() - started < 3
    await stack.idgate.settled()
    assert (await outcomes(stack))[-1]["error"] == "websocket_token_expired"


async def test_a_websocket_that_cannot_get_a_connection_is_refused(make_stack):
    stack = await make_stack(orders_route={**WS_ROUTE, "max_connections": 1})
    url = stack.idgate.url + "/v1/orders/stream"
    async with stack.http.ws_connect(url, headers=auth(stack.etl_token())):
        try:
            await stack.http.ws_connect(url, headers=auth(stack.etl_token()))
            raise AssertionError("a second WebSocket must not get the route's only connection")
        except aiohttp.WSServerHandshakeError as err:
            assert err.status == 503
    assert (await outcomes(stack))[0]["error"] == "upstream_busy"



async def test_one_caller_cannot_take_a_routes_connections_from_the_others(make_stack):
    """A caller holding its share (slow bodies, idle WebSockets, a slow path) is refused more at once,
    while another caller on the same route is still served."""
    stack = await make_stack(orders_route={"max_connections": 4, "max_connections_per_identity": 1,
                                           "pool_timeout": 5})
    hog = stack.etl_token()
    hanging = asyncio.create_task(stack.get("/v1/orders/__hang/1", token=hog))
    await stack.upstream.started.wait()
    started = time.monotonic()
    response = await stack.get("/v1/orders/7", token=hog)
    assert response.status == 503 and time.monotonic() - started < 2    # at once, not after pool_timeout
    other = stack.issuer.token("svc-etl-9", ("data-eng",), tenant="acme")
    assert (await stack.get("/v1/orders/7", token=other)).status == 200
    stack.upstream.release.set()
    assert (await hanging).status == 200
    assert [r["error"] for r in await outcomes(stack) if r["status"] == 503] == ["identity_busy"]
