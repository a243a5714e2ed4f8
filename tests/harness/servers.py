"""Real servers for integration tests, on free loopback ports: a recording upstream, a development
issuer, and idgate itself (in-process, port 0).  Every server is stopped by its fixture."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import WSMsgType, web

from proxy.config import load_config
from proxy.dev.issuer import DemoIdentity, DevIssuer
from proxy.services import Services, running_services
from proxy.app.listeners import Listeners
from tests.harness.processes import HOST, ServerUrls, free_port


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the context lasts: bound, never
    listening, so no other process can pick it up in the meantime (free_port() cannot promise that)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        yield int(sock.getsockname()[1])


@asynccontextmanager
async def serve_app(app: web.Application, port: int = 0) -> AsyncIterator[int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


@asynccontextmanager
async def tcp_server(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                     ) -> AsyncIterator[int]:
    """A raw TCP server on a free loopback port (for peers that misbehave on purpose); its port."""
    server = await asyncio.start_server(handle, HOST, 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class Received:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


@dataclass
class RecordingUpstream:
    """Answers with a JSON echo and remembers every request, so tests can prove what arrived (or that nothing did)."""

    received: list[Received] = field(default_factory=list)
    port: int = 0
    # Requests whose path contains "__hang" wait on this (set at teardown): a slow upstream without sleeps.
    release: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when a request's head has arrived, before its body is read: idgate has allowed and forwarded it.
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        async def big(request: web.Request) -> web.StreamResponse:
            size = int(request.query["bytes"])
            response = web.StreamResponse()
            await response.prepare(request)
            chunk = b"x" * 65536
            sent = 0
            while sent < size:
                part = chunk[: min(len(chunk), size - sent)]
                await response.write(part)
                sent += len(part)
            await response.write_eof()
            return response

        async def ws(request: web.Request) -> web.WebSocketResponse:
            self.received.append(Received(request.method, request.raw_path, list(request.headers.items()), b""))
            socket_ = web.WebSocketResponse()
            await socket_.prepare(request)
            async for message in socket_:
                if message.type == WSMsgType.TEXT:
                    await socket_.send_str("echo:" + message.data)
            return socket_

        async def echo(request: web.Request) -> web.StreamResponse:
            self.started.set()
            if request.headers.get("Upgrade", "").lower() == "websocket":
                return await ws(request)
            if "__big" in request.raw_path:
                return await big(request)
            if "__redirect" in request.raw_path:
                raise web.HTTPFound(f"http://{HOST}:{self.port}/v1/orders/elsewhere")
            if "__hang" in request.raw_path:
                await self.release.wait()
            # An upstream that sets the cookies its query names (each `set_cookie` a Set-Cookie value).
            set_cookies = request.query.getall("set_cookie", []) if "__set_cookie" in request.raw_path else []
            size = 0
            async for chunk in request.content.iter_chunked(65536):
                size += len(chunk)
            self.received.append(Received(request.method, request.raw_path, list(request.headers.items()), b""))
            response = web.json_response({"path": request.raw_path, "body_bytes": size})
            for value in set_cookies:
                response.headers.add("Set-Cookie", value)
            return response

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", echo)
        return app


@dataclass
class RunningIdgate(ServerUrls):
    services: Services
    listeners: Listeners
    config_path: Path

    @property
    def port(self) -> int:
        return self.listeners.main_port

    @property
    def admin_port(self) -> int:
        return self.listeners.admin_port

    async def settled(self) -> None:
        """Every request has left its handler and every audit record it queued is on disk."""
        await self.listeners.in_flight.idle()
        await self.services.audit.flush()

    async def audit_records(self) -> list[dict[str, Any]]:
        await self.settled()
        path = self.services.config.audit.path
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_config(tmp: Path, *, issuer: str, audience: str, upstream_port: int, policies: Path,
                 issuer_extra: dict[str, Any] | None = None, orders_route: dict[str, Any] | None = None,
                 extra_routes: list[dict[str, Any]] | None = None, **top: Any) -> Path:
    """An idgate.yaml on free ports, written through YAML so the strict loader is exercised too."""
    upstream = f"http://{HOST}:{upstream_port}"
    config: dict[str, Any] = {
        "listen": {"host": HOST, "port": 0},
        "admin": {"host": HOST, "port": 0},
        "issuers": [{"issuer": issuer, "audiences": [audience], **(issuer_extra or {})}],
        "policies_dir": str(policies),
        "routes": [
            {"name": "orders", "upstream": upstream, "hosts": ["orders.internal"], **(orders_route or {})},
            {"name": "reports", "upstream": upstream, "hosts": ["reports.internal"]},
            # "UPSTREAM" stands for the recording upstream, whose port the caller does not know yet.
            *({**r, "upstream": upstream} if r.get("upstream") == "UPSTREAM" else r for r in extra_routes or []),
        ],
        "audit": {"path": str(tmp / "audit" / "audit.jsonl")},
        **top,
    }
    path = tmp / "idgate.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@asynccontextmanager
async def running_idgate(config_path: Path, **service_args: Any) -> AsyncIterator[RunningIdgate]:
    """idgate in-process on the config's ports; `service_args` go to running_services (e.g. sts_client)."""
    config = load_config(config_path)
    async with running_services(config, **service_args) as services:
        listeners = Listeners(services)
        await listeners.start()
        try:
            yield RunningIdgate(services, listeners, config_path)
        finally:
            await listeners.stop()


@dataclass
class LocalIssuer:
    issuer: DevIssuer
    port: int

    def token(self, subject: str, groups: tuple[str, ...] = (), **claims: Any) -> str:
        return self.issuer.mint(DemoIdentity(subject, groups, claims))


@asynccontextmanager
async def local_issuer(audience: str = "orders-api") -> AsyncIterator[LocalIssuer]:
    port = free_port()
    issuer = DevIssuer(f"http://{HOST}:{port}", audience)
    async with serve_app(issuer.app(), port):
        yield LocalIssuer(issuer, port)


@dataclass
class RawResponse:
    status: int
    head: str
    body: bytes


async def raw_http(port: int, request: bytes, *, timeout: float = 10.0,
                   then: Callable[[], Awaitable[object]] | None = None, rest: bytes = b"") -> RawResponse:
    """Send bytes exactly as given (for clients that misbehave on purpose); read one response: its
    head, then Content-Length bytes, or everything until the server closes.  With `then`, send
    `request`, wait for `then()` (an event the test needs first), and only then send `rest`."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout):
            if then is not None:
                await then()
                writer.write(rest)
                await writer.drain()
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as closed:
                head = closed.partial
            text = head.decode("latin-1")
            length = next((int(line.split(":", 1)[1]) for line in text.split("\r\n")
                           if line.lower().startswith("content-length:")), None)
            body = await (reader.readexactly(length) if length is not None else reader.read())
    finally:
        writer.close()
    status_line = text.split("\r\n", 1)[0]
    return RawResponse(int(status_line.split()[1]) if status_line else 0, text, body)
