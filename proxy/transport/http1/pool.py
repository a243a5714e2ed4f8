"""A keep-alive pool of upstream HTTP/1.1 connections, keyed by (scheme, host, port, TLS settings), and
the exchange that borrows one connection for one request.

What goes out is what the caller gave: the method, the target byte for byte (no re-encoding, no dot
resolution), the headers in order (nothing added but `Transfer-Encoding: chunked` for a body without a
Content-Length); what comes back is the answer undecoded (no decompression).

A connection is reused only after an answer that was complete, persistent (HTTP/1.1 without
`Connection: close`, or HTTP/1.0 with `keep-alive`, and not delimited by closing), with the whole
request written, and nothing after it: any other outcome (an error, a timeout, a caller that stopped
reading, bytes after the answer) closes it.  Idle connections are closed after `idle_timeout`, when the
upstream closes them, when they receive a byte, and beyond `max_idle` per origin (oldest first).

Retrying, the one case: a *reused* connection that closes (or resets) before any byte of the answer
arrived is retried once on a fresh connection, and only for a request that is safe to send twice: a
safe method (GET, HEAD, OPTIONS, TRACE, RFC 9110 §9.2.1) with no body.  The upstream may have received
the first copy (its close may have crossed the request on the wire), so nothing else is ever resent: not
a request with a body, not PUT or DELETE, not after a timeout, not after an answer started.  A pooled
connection found closed before anything is written on it is simply not used.

The pool does not limit connections itself: each is opened for one exchange that has none idle to
take, so there are never more busy connections than concurrent exchanges (the caller bounds those).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

from proxy.transport.http1.connection import Connection, Limits, request_head
from proxy.transport.http1.errors import ConnectFailed, ConnectionClosed, ConnectTimeout

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """How to verify an https upstream and present ourselves to it."""

    ca_file: str | None = None          # PEM bundle to verify with, instead of the system CAs
    cert_file: str | None = None        # client certificate chain (PEM), for upstreams that require mTLS
    key_file: str | None = None         # its private key (PEM, unencrypted)
    server_name: str | None = None      # SNI and the name verified, instead of the URL's host


def _no_password() -> bytes:
    raise ValueError("an encrypted private key is not supported")


def client_context(tls: TlsSettings | None) -> ssl.SSLContext:
    """A verifying TLS client context (TLS 1.2 or later, HTTP/1.1 by ALPN)."""
    context = ssl.create_default_context(cafile=tls.ca_file if tls is not None else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    if tls is not None and tls.cert_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file, password=_no_password)
    return context


class Origin:
    """One upstream (scheme, host, port, TLS settings) and its idle connections, most recent last."""

    __slots__ = ("key", "host", "port", "ssl", "server_hostname", "idle", "max_idle")

    def __init__(self, key: tuple[object, ...], host: str, port: int, context: ssl.SSLContext | None,
                 server_hostname: str | None, max_idle: int) -> None:
        self.key = key
        self.host = host
        self.port = port
        self.ssl = context
        self.server_hostname = server_hostname
        self.idle: deque[Connection] = deque()
        self.max_idle = max_idle


class Pool:
    def __init__(self, *, idle_timeout: float = 30.0, limits: Limits = Limits()) -> None:
        self._idle_timeout = idle_timeout
        self._limits = limits
        self._origins: dict[tuple[object, ...], Origin] = {}
        self._open: set[Connection] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self.opened = 0                     # connections opened so far (for tests and metrics)

    def origin(self, url: str, tls: TlsSettings | None = None, *, max_idle: int = 256) -> Origin:
        """The origin of `url` (scheme://host[:port]); the same one for every caller with the same key
        (its idle bound is then the largest asked for).  Builds the TLS context once, now: a bad CA
        bundle or key fails here, at startup, not at the first request."""
        parts = urlsplit(url)
        scheme, host = parts.scheme, parts.hostname
        if scheme not in _DEFAULT_PORTS or not host:
            raise ValueError(f"not an http:// or https:// URL with a host: {url!r}")
        if tls is not None and scheme != "https":
            raise ValueError("TLS settings for an http:// upstream")
        port = parts.port or _DEFAULT_PORTS[scheme]
        key = (scheme, host, port, tls)
        found = self._origins.get(key)
        if found is None:
            context = client_context(tls) if scheme == "https" else None
            server_hostname = ((tls.server_name if tls is not None else None) or host) if context else None
            found = self._origins[key] = Origin(key, host, port, context, server_hostname, max_idle)
        found.max_idle = max(found.max_idle, max_idle)
        return found

    def request(self, origin: Origin, method: str, target: str, headers: list[tuple[str, str]],
                body: AsyncIterable[bytes] | None = None, *, connect_timeout: float, read_timeout: float) -> Exchange:
        """`async with pool.request(...) as answer:` status, reason, headers, then `await answer.read()`
        until it returns b"".  `target` is the request-target as sent (origin form: path and query)."""
        return Exchange(self, origin, method, target, headers, body, connect_timeout, read_timeout)

    def idle_count(self) -> int:
        return sum(len(origin.idle) for origin in self._origins.values())

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for origin in self._origins.values():
            origin.idle.clear()
        for conn in list(self._open):
            conn.pooled = False
            conn.abort()
        await asyncio.sleep(0)              # let the transports run connection_lost

    # --- for Exchange ---

    def _take(self, origin: Origin) -> Connection | None:
        idle = origin.idle
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            conn.pooled = False
            if not conn.closed and now - conn.idle_since < self._idle_timeout:
                return conn
            conn.abort()
        return None

    async def _connect(self, origin: Origin, timeout: float) -> Connection:
        loop = asyncio.get_running_loop()
        conn = Connection(loop, self._limits, self._lost)
        conn.origin = origin
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: conn, origin.host, origin.port, ssl=origin.ssl,
                                             server_hostname=origin.server_hostname)
        except TimeoutError:
            conn.abort()
            raise ConnectTimeout("connecting to the upstream took longer than connect_timeout") from None
        except OSError as exc:              # refused, unreachable, no such name, TLS handshake or verification
            raise ConnectFailed(f"cannot connect to the upstream: {type(exc).__name__}: {exc}") from exc
        self._open.add(conn)
        self.opened += 1
        return conn

    def _release(self, conn: Connection, reusable: bool) -> None:
        reusable = reusable and conn.reusable()
        conn.finish()
        if not reusable:
            conn.abort()
            return
        origin: Origin = conn.origin
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        conn.pooled = True
        origin.idle.append(conn)
        if len(origin.idle) > origin.max_idle:
            oldest = origin.idle.popleft()
            oldest.pooled = False
            oldest.abort()
        if self._sweep is None:
            self._sweep = loop.call_at(conn.idle_since + self._idle_timeout, self._expire)

    def _lost(self, conn: Connection) -> None:
        self._open.discard(conn)
        if conn.pooled:
            conn.pooled = False
            try:
                conn.origin.idle.remove(conn)
            except ValueError:
                pass

    def _expire(self) -> None:
        self._sweep = None
        loop = asyncio.get_running_loop()
        oldest_allowed = loop.time() - self._idle_timeout
        next_due: float | None = None
        for origin in self._origins.values():
            idle = origin.idle
            while idle and idle[0].idle_since <= oldest_allowed:
                conn = idle.popleft()
                conn.pooled = False
                conn.abort()
            if idle:
                due = idle[0].idle_since + self._idle_timeout
                next_due = due if next_due is None else min(next_due, due)
        if next_due is not None:
            self._sweep = loop.call_at(next_due, self._expire)


class Exchange:
    """One request and its answer on one connection: an async context manager that is also the answer."""

    __slots__ = ("_pool", "_origin", "_method", "_target", "_headers", "_body", "_connect_timeout",
                 "_read_timeout", "_conn", "_writer", "status", "reason", "headers", "read")

    read: Callable[[], Awaitable[bytes]]    # the body bytes that have arrived; b"" at its end

    def __init__(self, pool: Pool, origin: Origin, method: str, target: str, headers: list[tuple[str, str]],
                 body: AsyncIterable[bytes] | None, connect_timeout: float, read_timeout: float) -> None:
        self._pool = pool
        self._origin = origin
        self._method = method
        self._target = target
        self._headers = headers
        self._body = body
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._conn: Connection | None = None
        self._writer: asyncio.Task[None] | None = None
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []

    async def __aenter__(self) -> Exchange:
        head, length = request_head(self._method, self._target, self._headers, self._body is not None)
        pool = self._pool
        replayable = self._body is None and self._method in _SAFE_METHODS
        for attempt in (1, 2):
            conn = pool._take(self._origin) if attempt == 1 else None
            reused = conn is not None
            if conn is None:
                conn = await pool._connect(self._origin, self._connect_timeout)
            self._conn = conn
            conn.begin(self._method == "HEAD", self._read_timeout)
            conn.write(head)
            if self._body is None:
                conn.request_sent()
            else:
                self._writer = asyncio.get_running_loop().create_task(self._send(conn, self._body, length))
            try:
                await conn.head()
            except ConnectionClosed as closed:
                self._abandon()
                if attempt == 1 and reused and replayable and not closed.answered:
                    continue                # a stale keep-alive connection: once more, on a fresh one
                raise
            except BaseException:
                self._abandon()
                raise
            self.status = conn.status
            self.reason = conn.reason.decode("utf-8", "surrogateescape")
            self.headers = [(name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
                            for name, value in conn.headers]
            self.read = conn.read
            return self
        raise AssertionError("unreachable: the second attempt returns or raises")

    def ready(self) -> bool:
        """Whether body bytes are waiting, or the body is complete (read() will not wait)."""
        conn = self._conn
        return conn is not None and conn.ready()

    def at_end(self) -> bool:
        """Whether the whole body has been read (the next read() returns b"")."""
        conn = self._conn
        return conn is not None and conn.at_end()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        writer = self._writer
        reusable = exc is None
        if writer is not None and not writer.done():
            writer.cancel()                 # the answer came before the whole body went out
            reusable = False
        self._pool._release(conn, reusable)

    def _abandon(self) -> None:
        conn, self._conn = self._conn, None
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
        self._writer = None
        if conn is not None:
            self._pool._release(conn, False)

    @staticmethod
    async def _send(conn: Connection, body: AsyncIterable[bytes], length: int | None) -> None:
        try:
            await conn.send_body(body, length)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:        # the caller's body failed, or did not match its length
            conn.fail(exc)
            return
        conn.request_sent()
