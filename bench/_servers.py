"""The benchmark's helper servers, each run as its own process on a loopback port: `echo PORT [LOOP]` (bare
handler and fast upstream, on asyncio or uvloop), `passthrough PORT UPSTREAM_PORT` (the stack's proxying
floor: aiohttp server + client, no checks), `recorder PORT FILE` (the echo upstream writing every X-Request-Id
it receives to FILE, for the soak's reconciliation) and `issuer PORT AUDIENCE` (development issuer)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from proxy.dev.issuer import DevIssuer
from tests.harness.processes import HOST

SMALL_BODY = b"Hello, World!"
CHUNK = 64 * 1024


async def _small(request: web.Request) -> web.Response:
    return web.Response(body=SMALL_BODY, content_type="text/plain")


async def _download(request: web.Request) -> web.StreamResponse:
    """`GET /__big?bytes=N`: N bytes streamed in 64 KiB chunks, never held whole."""
    size = int(request.query["bytes"])
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    chunk = b"x" * CHUNK
    sent = 0
    while sent < size:
        part = chunk if size - sent >= CHUNK else chunk[: size - sent]
        await response.write(part)
        sent += len(part)
    await response.write_eof()
    return response


async def _upload(request: web.Request) -> web.Response:
    """Reads and discards the body, answering with how many bytes arrived."""
    size = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        size += len(chunk)
    return web.json_response({"body_bytes": size})


def echo_app() -> web.Application:
    # The bare handler and the fast upstream are the same app, so the ratio compares like with like.
    app = web.Application()
    app.router.add_get("/__big", _download)
    app.router.add_route("POST", "/{tail:.*}", _upload)
    app.router.add_route("PUT", "/{tail:.*}", _upload)
    app.router.add_get("/{tail:.*}", _small)
    return app


_SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)


def passthrough_app(upstream_port: int) -> web.Application:
    """The least an aiohttp reverse proxy does (pooled client, streamed answer), with none of
    idgate's work: the ceiling any aiohttp-based proxy can reach on this machine."""
    upstream = f"http://{HOST}:{upstream_port}"

    async def session(app: web.Application) -> AsyncIterator[None]:
        app[_SESSION] = aiohttp.ClientSession(auto_decompress=False)
        yield
        await app[_SESSION].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        async with request.app[_SESSION].request(request.method, upstream + request.raw_path,
                                                 headers=request.headers,
                                                 data=request.content if request.body_exists else None) as answer:
            response = web.StreamResponse(status=answer.status)
            await response.prepare(request)
            async for chunk in answer.content.iter_chunked(CHUNK):
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


RECORDER_FLUSH = "/__recorder/flush"   # on the recorder's own port, never through idgate
FLUSH_SECONDS = 0.5


def recorder_app(path: str) -> web.Application:
    """The echo upstream that appends each X-Request-Id it received (a line each, "-" when there was none)
    to `path`: every FLUSH_SECONDS, on shutdown, and at once on `GET /__recorder/flush`, which answers with
    how many it has written (so the soak reads a complete file without stopping the upstream)."""
    pending: list[str] = []
    written = 0

    def flush() -> int:
        nonlocal written
        if pending:
            with open(path, "a", encoding="ascii") as f:
                f.write("".join(f"{rid}\n" for rid in pending))
            written += len(pending)
            pending.clear()
        return written

    async def received(request: web.Request) -> web.Response:
        pending.append(request.headers.get("X-Request-Id", "-"))
        return web.Response(body=SMALL_BODY, content_type="text/plain")

    async def flushed(request: web.Request) -> web.Response:
        return web.json_response({"written": flush()})

    async def periodic(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(FLUSH_SECONDS)   # a timer, not a synchronization
                flush()
        task = asyncio.create_task(loop())
        yield
        task.cancel()
        flush()

    app = web.Application()
    app.cleanup_ctx.append(periodic)
    app.router.add_get(RECORDER_FLUSH, flushed)
    app.router.add_route("*", "/{tail:.*}", received)
    return app


def _event_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def main(argv: list[str]) -> int:
    kind, port = argv[0], int(argv[1])
    loop = _event_loop(argv[2] if kind == "echo" and len(argv) > 2 else "asyncio")
    if kind == "echo":
        app = echo_app()
    elif kind == "passthrough":
        app = passthrough_app(int(argv[2]))
    elif kind == "recorder":
        app = recorder_app(argv[2])
    elif kind == "issuer":
        app = DevIssuer(f"http://{HOST}:{port}", argv[2]).app()
    else:
        print(f"unknown server kind {kind!r}", file=sys.stderr)
        return 2
    web.run_app(app, host=HOST, port=port, access_log=None, print=None, loop=loop)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
