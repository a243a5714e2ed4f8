"""WebSocket relay for the reverse proxy: authorized once at the upgrade, then frames pass both ways
until either side closes, or idgate closes it: when the token that authorized it expires, at the
route's maximum lifetime, or when it goes idle.  The outcome record says which."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import WSMsgType, web
from yarl import URL

from proxy.config import RouteConfig
from proxy.core.reasons import Reason
from proxy.edges._http import RESPONSE_STARTED
from proxy.core.errors import UpstreamError
from proxy.core.model import AccessRequest, Decision
from proxy.services import Services

_MAX_MESSAGE = 4 * 1024 * 1024


class _Activity:
    """When a message last crossed the relay, either way (for the idle timeout), and the bytes that did:
    kept here, not in the pumps' results, so a pump cancelled at the end still counts."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.moved = [0, 0]                  # client -> upstream, upstream -> client


async def _pump(source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, activity: _Activity, way: int) -> None:
    async for message in source:
        activity.last = time.monotonic()
        if message.type == WSMsgType.TEXT:
            activity.moved[way] += len(message.data)
            await sink.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            activity.moved[way] += len(message.data)
            await sink.send_bytes(message.data)
        else:  # CLOSE / ERROR: stop relaying; the other direction is closed by the caller
            break


async def _until_done_or_due(pumps: set[asyncio.Task[None]], activity: _Activity, route: RouteConfig,
                             token_expires_at: float) -> Reason | None:
    """Wait until either side closes (None), or until idgate must close the relay, and why: the token
    that authorized it expired, it reached the route's maximum lifetime, or it went idle."""
    started = time.monotonic()
    expires = started + (token_expires_at - time.time())
    end_of_life = started + route.websocket_max_lifetime
    while True:
        now = time.monotonic()
        idle_until = activity.last + route.websocket_idle_timeout
        due = min(expires, end_of_life, idle_until)
        if now >= due:
            if due == expires:
                return Reason.WEBSOCKET_TOKEN_EXPIRED
            return Reason.WEBSOCKET_MAX_LIFETIME if due == end_of_life else Reason.WEBSOCKET_IDLE
        done, _ = await asyncio.wait(pumps, timeout=due - now, return_when=asyncio.FIRST_COMPLETED)
        if done:
            return None


# Close codes (RFC 6455 §7.4.1): a token that expired ends the session by policy; the rest go away.
_CLOSE_CODES = {Reason.WEBSOCKET_TOKEN_EXPIRED: 1008, Reason.WEBSOCKET_MAX_LIFETIME: 1001, Reason.WEBSOCKET_IDLE: 1001}


def _moved(task: asyncio.Task[int]) -> int:
    return task.result() if task.done() and not task.cancelled() and task.exception() is None else 0


async def relay(request: web.Request, services: Services, access: AccessRequest, decision: Decision, url: URL,
                headers: list[tuple[str, str]], route: RouteConfig) -> web.WebSocketResponse:
    """The caller has checked the handshake (GET, valid Sec-WebSocket-*) before authorizing it."""
    started = time.perf_counter()
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    # The client's handshake headers belong to the client<->idgate hop; aiohttp makes fresh ones.
    upstream_headers = [(n, v) for n, v in headers if not n.lower().startswith("sec-websocket-")]
    origin = services.origins[route.name]      # the route's TLS settings, as the HTTP requests use them
    try:
        upstream = await services.websocket_session.ws_connect(
            url, headers=upstream_headers, protocols=offered, max_msg_size=_MAX_MESSAGE,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=route.connect_timeout),
            ssl=origin.ssl if origin.ssl is not None else True, server_hostname=origin.server_hostname,
        )
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        failure = UpstreamError("the upstream refused the WebSocket upgrade", reason=Reason.UPSTREAM_FAILED)
        services.pipeline.record_failure(access, decision, failure, duration=time.perf_counter() - started)
        raise failure from exc
    inbound: asyncio.Task[None] | None = None
    outbound: asyncio.Task[None] | None = None
    activity = _Activity()
    closed_by: Reason | None = None
    client = web.WebSocketResponse(protocols=(upstream.protocol,) if upstream.protocol else (), max_msg_size=_MAX_MESSAGE)
    client.headers["Server"] = "idgate"   # not aiohttp's version string
    try:
        request[RESPONSE_STARTED] = True
        await client.prepare(request)
        inbound = asyncio.create_task(_pump(client, upstream, activity, 0))
        outbound = asyncio.create_task(_pump(upstream, client, activity, 1))
        assert decision.identity is not None, "an allow decision always carries its identity"
        closed_by = await _until_done_or_due({inbound, outbound}, activity, route, decision.identity.expires_at)
    finally:
        code = _CLOSE_CODES[closed_by] if closed_by else 1000
        try:
            async with asyncio.timeout(route.connect_timeout):
                await upstream.close(code=code)
                await client.close(code=code, message=closed_by.value.encode() if closed_by else b"")
        except TimeoutError:
            # A client that does not read would hold the close, and the route's connection, forever.
            if request.transport is not None:
                request.transport.abort()
        tasks = [t for t in (inbound, outbound) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        services.pipeline.record_outcome(
            access, decision, status=101, bytes_in=activity.moved[0], bytes_out=activity.moved[1],
            duration=time.perf_counter() - started, error=closed_by,
        )
    return client
