"""A loopback upstream that writes exactly the bytes a test scripts, over raw sockets: for answers that
no well-behaved server library would produce (broken framing, smuggled bytes, stalls, early closes),
and to see exactly what idgate wrote on the wire."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.harness.processes import HOST


class _Close:
    def __repr__(self) -> str:
        return "CLOSE"


class _Hang:
    def __repr__(self) -> str:
        return "HANG"


class _Skip:
    def __repr__(self) -> str:
        return "NO_BODY_READ"


CLOSE = _Close()          # close the connection (FIN)
HANG = _Hang()            # stop: write nothing more, read nothing more, until the server stops
NO_BODY_READ = _Skip()    # as the first step: answer without reading the request body
Step = bytes | float | _Close | _Hang | _Skip   # bytes are written, a float is a pause in seconds


@dataclass
class RawRequest:
    connection: int       # 1 for the first connection the upstream accepted, 2 for the next, ...
    index: int            # 1 for the first request on its connection
    head: bytes           # request line and headers, up to and with the CRLF CRLF
    body: bytes = b""

    @property
    def request_line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode("latin-1")

    @property
    def target(self) -> str:
        return self.request_line.split(" ")[1]

    @property
    def method(self) -> str:
        return self.request_line.split(" ")[0]

    @property
    def header_lines(self) -> list[str]:
        return [line.decode("latin-1") for line in self.head.split(b"\r\n")[1:] if line]

    def header(self, name: str) -> list[str]:
        return [line.split(":", 1)[1].strip() for line in self.header_lines
                if line.split(":", 1)[0].lower() == name.lower()]


Answer = Callable[[RawRequest], Sequence[Step]]


def ok(body: bytes = b"ok", *, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


@dataclass
class RawUpstream:
    answer: Answer
    port: int = 0
    connections: int = 0
    requests: list[RawRequest] = field(default_factory=list)
    closed: int = 0                               # connections that ended (either side)
    peer_certs: list[Any] = field(default_factory=list)   # over TLS: the client certificate of each connection
    written: int = 0                              # answer bytes the sockets have taken so far
    body_bytes: int = 0                           # request body bytes read so far (every request)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)   # set at each request head

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number, index = self.connections, 0
        if writer.get_extra_info("sslcontext") is not None:
            self.peer_certs.append(writer.get_extra_info("peercert"))
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                index += 1
                request = RawRequest(number, index, head)
                self.requests.append(request)
                self.arrived.set()
                steps = list(self.answer(request))
                if steps and steps[0] is NO_BODY_READ:
                    steps = steps[1:]
                else:
                    request.body = await self._read_body(reader, request)
                for step in steps:
                    if isinstance(step, bytes):
                        writer.write(step)
                        await writer.drain()
                        self.written += len(step)
                    elif isinstance(step, float):
                        await asyncio.sleep(step)
                    elif step is CLOSE:
                        return
                    elif step is HANG:
                        await asyncio.Event().wait()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.closed += 1
            writer.close()

    async def _read_body(self, reader: asyncio.StreamReader, request: RawRequest) -> bytes:
        length = request.header("Content-Length")
        if length:
            body = await reader.readexactly(int(length[0]))
            self.body_bytes += len(body)
            return body
        if [v.lower() for v in request.header("Transfer-Encoding")] == ["chunked"]:
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return body
                chunk = await reader.readexactly(size)
                self.body_bytes += len(chunk)
                body += chunk
                await reader.readexactly(2)
        return b""




@asynccontextmanager
async def raw_upstream(answer: Answer, *, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[RawUpstream]:
    upstream = RawUpstream(answer)
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await upstream._serve(reader, writer)
        except asyncio.CancelledError:
            pass                    # stopped with the upstream (asyncio.start_server would log it)
        finally:
            tasks.discard(task)

    server = await asyncio.start_server(serve, HOST, 0, ssl=ssl_context, limit=1024 * 1024)
    upstream.port = server.sockets[0].getsockname()[1]
    try:
        yield upstream
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


# --- idgate in front of a raw upstream -------------------------------------------------------------

RAW_HOST = "orders.internal"
RAW_POLICY = """\
rules:
  - id: raw-upstream
    who: {{issuer: "{issuer}", subject: [svc-etl-7]}}
    http:
      - hosts: [orders.internal]
        methods: [GET, HEAD, POST, PUT, DELETE]
        paths: ["/**"]
"""


@dataclass
class RawStack:
    """idgate (in-process) whose `orders` route leads to a RawUpstream, and a client allowed everything there."""

    upstream: RawUpstream
    idgate: Any
    http: Any                     # aiohttp.ClientSession
    token: str

    async def request(self, path: str, *, method: str = "GET", data: Any = None,
                      headers: dict[str, str] | None = None) -> tuple[int, bytes | Exception]:
        """The status and the body, or the exception that reading the body ended with."""
        import aiohttp
        from yarl import URL
        # encoded=True: the target as written here, not as yarl would normalize it.
        async with self.http.request(method, URL(self.idgate.url + path, encoded=True), data=data, headers={
                "Host": RAW_HOST, "Authorization": f"Bearer {self.token}", **(headers or {})}) as response:
            try:
                return response.status, await response.read()
            except aiohttp.ClientError as exc:
                return response.status, exc

    async def outcomes(self) -> list[dict[str, Any]]:
        return [r for r in await self.idgate.audit_records() if r["event"] == "outcome"]


@asynccontextmanager
async def raw_stack(tmp: Any, answer: Answer, *, route: dict[str, Any] | None = None,
                    ssl_context: ssl.SSLContext | None = None, scheme: str = "http") -> AsyncIterator[RawStack]:
    import aiohttp
    import yaml

    from tests.harness.servers import local_issuer, running_idgate, write_config

    async with local_issuer("orders-api") as issuer, raw_upstream(answer, ssl_context=ssl_context) as upstream:
        policies = tmp / "policies"
        policies.mkdir(parents=True, exist_ok=True)
        (policies / "raw.yaml").write_text(RAW_POLICY.format(issuer=issuer.issuer.issuer_url))
        path = write_config(tmp, issuer=issuer.issuer.issuer_url, audience="orders-api", upstream_port=upstream.port,
                            policies=policies, orders_route=route)
        if scheme != "http":
            config = yaml.safe_load(path.read_text())
            config["routes"][0]["upstream"] = f"{scheme}://{HOST}:{upstream.port}"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
        async with running_idgate(path) as idgate, aiohttp.ClientSession(auto_decompress=False) as http:
            yield RawStack(upstream, idgate, http, issuer.token("svc-etl-7", ("data-eng",)))
