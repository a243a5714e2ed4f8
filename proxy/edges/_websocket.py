"""WebSocket relay for the reverse proxy: authorized once at the upgrade, then frames pass both
ways until either side closes."""

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


async def _pump(source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> int:
    moved = 0
    async for message in source:
        if message.type == WSMsgType.TEXT:
            moved += len(message.data)
            await sink.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            moved += len(message.data)
            await sink.send_bytes(message.data)
        else:  # CLOSE / ERROR: stop relaying; the other direction is closed by the caller
            break
    return moved


def _moved(task: asyncio.Task[int]) -> int:
    return task.result() if task.done() and not task.cancelled() and task.exception() is None else 0


async def relay(request: web.Request, services: Services, access: AccessRequest, decision: Decision, url: URL,
                headers: list[tuple[str, str]], route: RouteConfig) -> web.WebSocketResponse:
    """The caller has checked the handshake (GET, valid Sec-WebSocket-*) before authorizing it."""
    started = time.perf_counter()
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    # The client's handshake headers belong to the client<->idgate hop; aiohttp makes fresh ones.
    upstream_headers = [(n, v) for n, v in headers if not n.lower().startswith("sec-websocket-")]
    try:
        upstream = await services.upstream.ws_connect(
            url, headers=upstream_headers, protocols=offered, max_msg_size=_MAX_MESSAGE,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=route.connect_timeout),
        )
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        failure = UpstreamError("the upstream refused the WebSocket upgrade", reason=Reason.UPSTREAM_FAILED)
        services.pipeline.record_failure(access, decision, failure, duration=time.perf_counter() - started)
        raise failure from exc
    inbound: asyncio.Task[int] | None = None
    outbound: asyncio.Task[int] | None = None
    client = web.WebSocketResponse(protocols=(upstream.protocol,) if upstream.protocol else (), max_msg_size=_MAX_MESSAGE)
    client.headers["Server"] = "idgate"   # not aiohttp's version string
    try:
        request[RESPONSE_STARTED] = True
        await client.prepare(request)
        inbound = asyncio.create_task(_pump(client, upstream))
        outbound = asyncio.create_task(_pump(upstream, client))
        await asyncio.wait({inbound, outbound}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await upstream.close()
        await client.close()
        tasks = [t for t in (inbound, outbound) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        services.pipeline.record_outcome(
            access, decision, status=101,
            bytes_in=_moved(inbound) if inbound else 0, bytes_out=_moved(outbound) if outbound else 0,
            duration=time.perf_counter() - started,
        )
    return client
