"""proxy.transport.http1 against a raw-socket upstream: the request exactly as given, every answer
framing, reuse only of connections that are clean, the one retry, timeouts, and bounded buffers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from proxy.transport import http1
from tests.harness.processes import HOST, eventually, steady
from tests.harness.raw_upstream import CLOSE, HANG, NO_BODY_READ, RawRequest, Step, ok, raw_upstream

HOST_HEADER = [("Host", "upstream.test")]


async def fetch(pool: http1.Pool, origin: http1.Origin, method: str = "GET", target: str = "/",
                headers: list[tuple[str, str]] | None = None, body: AsyncIterator[bytes] | None = None, *,
                read_timeout: float = 2.0, connect_timeout: float = 2.0) -> tuple[int, list[tuple[str, str]], bytes]:
    async with pool.request(origin, method, target, HOST_HEADER if headers is None else headers, body,
                            connect_timeout=connect_timeout, read_timeout=read_timeout) as answer:
        data = b""
        while chunk := await answer.read():
            data += chunk
        return answer.status, answer.headers, data


async def chunks(*parts: bytes, pause: float = 0.0) -> AsyncIterator[bytes]:
    for part in parts:
        if pause:
            await asyncio.sleep(pause)
        yield part


@pytest.fixture
async def pool() -> AsyncIterator[http1.Pool]:
    pool = http1.Pool()
    yield pool
    await pool.close()


def origin_of(pool: http1.Pool, port: int, **kwargs: object) -> http1.Origin:
    return pool.origin(f"http://{HOST}:{port}", **kwargs)  # type: ignore[arg-type]


# --- the request, exactly as given ---

async def test_the_request_goes_out_byte_for_byte(pool):
    async with raw_upstream(lambda r: [ok()]) as upstream:
        headers = [("Host", "orders.internal"), ("x-lower", "a"), ("X-Dup", "1"), ("X-Dup", "2"),
                   ("X-Tab", "a\tb"), ("X-Bytes", "caf\udcc3\udca9")]   # surrogateescape: the client's own bytes
        await fetch(pool, origin_of(pool, upstream.port), target="/a/%2e%2E//b/./c?x=%20&y=%2F&&z", headers=headers)
    assert upstream.requests[0].head == (
        b"GET /a/%2e%2E//b/./c?x=%20&y=%2F&&z HTTP/1.1\r\nHost: orders.internal\r\nx-lower: a\r\nX-Dup: 1\r\n"
        b"X-Dup: 2\r\nX-Tab: a\tb\r\nX-Bytes: caf\xc3\xa9\r\n\r\n")      # nothing added: no User-Agent, Accept...


async def test_request_framing_content_length_chunked_or_none(pool):
    async with raw_upstream(lambda r: [ok()]) as upstream:
        origin = origin_of(pool, upstream.port)
        await fetch(pool, origin, "POST")
        await fetch(pool, origin, "PUT", headers=[*HOST_HEADER, ("Content-Length", "11")],
                    body=chunks(b"hello", b" world"))
        await fetch(pool, origin, "POST", body=chunks(b"streamed ", b"", b"body"))
    none, length, chunked = upstream.requests
    assert none.header("Content-Length") == [] and none.header("Transfer-Encoding") == [] and none.body == b""
    assert length.header("Content-Length") == ["11"] and length.header("Transfer-Encoding") == []
    assert length.body == b"hello world"
    assert chunked.header("Transfer-Encoding") == ["chunked"] and chunked.header("Content-Length") == []
    assert chunked.body == b"streamed body"
    assert upstream.connections == 1


@pytest.mark.parametrize("headers,target", [
    ([("X-Evil", "a\r\nX-Injected: 1")], "/"),
    ([("X-Evil", "a\nb")], "/"),
    ([("X-Evil", "a\rb")], "/"),
    ([("X-Evil", "a\x00b")], "/"),
    ([("X-Evil", "a\x7fb")], "/"),
    ([("X-Evil\r\nX-Injected", "1")], "/"),
    ([], "/a b"),
    ([], "/a\r\nX: 1"),
    ([("Transfer-Encoding", "chunked")], "/"),
    ([("Content-Length", "+5")], "/"),
])
async def test_a_request_head_that_could_smuggle_is_never_written(pool, headers, target):
    async with raw_upstream(lambda r: [ok()]) as upstream:
        with pytest.raises(http1.InvalidRequest):
            await fetch(pool, origin_of(pool, upstream.port), target=target, headers=[*HOST_HEADER, *headers])
    assert upstream.connections == 0


@pytest.mark.parametrize("declared,parts", [(10, (b"short",)), (3, (b"too", b"long"))])
async def test_a_body_that_does_not_match_its_length_fails_and_the_connection_is_dropped(pool, declared, parts):
    async with raw_upstream(lambda r: [NO_BODY_READ, HANG] if r.index == 1 and r.connection == 1 else [ok()]) as upstream:
        origin = origin_of(pool, upstream.port)
        with pytest.raises(http1.BodyMismatch):
            await fetch(pool, origin, "POST", headers=[*HOST_HEADER, ("Content-Length", str(declared))],
                        body=chunks(*parts))
        assert (await fetch(pool, origin))[2] == b"ok"
    assert upstream.connections == 2


async def test_the_callers_body_error_is_raised_as_is_and_the_connection_dropped(pool):
    class ClientWentAway(Exception):
        pass

    async def failing() -> AsyncIterator[bytes]:
        yield b"part"
        raise ClientWentAway

    async with raw_upstream(lambda r: [NO_BODY_READ, HANG] if r.connection == 1 else [ok()]) as upstream:
        origin = origin_of(pool, upstream.port)
        with pytest.raises(ClientWentAway):
            await fetch(pool, origin, "POST", body=failing())
        assert (await fetch(pool, origin))[2] == b"ok"
    assert upstream.connections == 2


# --- answers: framing and reuse ---

FRAMINGS = [
    pytest.param("GET", [ok(b"hello")], 200, b"hello", True, id="content-length"),
    pytest.param("GET", [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"],
                 200, b"hello world", True, id="chunked"),
    pytest.param("GET", [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"],
                 200, b"hello", True, id="chunked-with-trailers"),
    pytest.param("GET", [b"HTTP/1.1 200 OK\r\n\r\nuntil ", 0.05, b"close", CLOSE], 200, b"until close", False,
                 id="read-until-close"),
    pytest.param("HEAD", [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"], 200, b"", True, id="head-with-length"),
    pytest.param("HEAD", [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"], 200, b"", True, id="head-chunked"),
    pytest.param("HEAD", [b"HTTP/1.1 200 OK\r\n\r\n"], 200, b"", True, id="head-no-framing"),
    pytest.param("HEAD", [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"], 200, b"", False,
                 id="head-with-a-body-it-must-not-have"),
    pytest.param("GET", [b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"], 204, b"", True, id="204"),
    pytest.param("GET", [b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"], 304, b"", True, id="304"),
    pytest.param("GET", [b"HTTP/1.1 100 Continue\r\n\r\n", 0.02, ok(b"final")], 200, b"final", True, id="100-continue"),
    pytest.param("GET", [b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + ok(b"final")], 200, b"final", True,
                 id="103-early-hints"),
    pytest.param("GET", [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"], 200, b"ok", False,
                 id="connection-close"),
    pytest.param("GET", [b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"], 200, b"ok", False, id="http/1.0"),
    pytest.param("GET", [b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"], 200, b"ok", True,
                 id="http/1.0-keep-alive"),
    pytest.param("GET", [b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n", 0.02, b"o", 0.02, b"k"], 404, b"ok",
                 True, id="body-in-pieces"),
    pytest.param("GET", [b"HTTP/1.1 2", 0.02, b"00 O", 0.02, b"K\r\nContent-Le", 0.02, b"ngth: 2\r", 0.02, b"\n\r",
                         0.02, b"\nok"], 200, b"ok", True, id="head-in-pieces"),
    pytest.param("GET", [b"\r\n\r\n" + ok(b"after blank lines")], 200, b"after blank lines", True, id="leading-blank-lines"),
]


@pytest.mark.parametrize("method,wire,status,body,reused", FRAMINGS)
async def test_answer_framing_and_reuse(pool, method, wire, status, body, reused):
    async with raw_upstream(lambda r: wire if r.target == "/first" else [ok(b"second")]) as upstream:
        origin = origin_of(pool, upstream.port)
        assert (await fetch(pool, origin, method, "/first"))[::2] == (status, body)
        assert (await fetch(pool, origin, target="/second"))[2] == b"second"
    assert upstream.requests[1].connection == (1 if reused else 2)


async def test_the_answer_is_not_decoded(pool):
    gzipped = bytes.fromhex("1f8b08000000000000ff") + b"\x00\x01\x02"
    answer = (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(gzipped)) + gzipped
    async with raw_upstream(lambda r: [answer]) as upstream:
        _, headers, body = await fetch(pool, origin_of(pool, upstream.port))
    assert body == gzipped and ("Content-Encoding", "gzip") in headers


BROKEN = [
    pytest.param(b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", id="bad-status-line"),
    pytest.param(b"\x00\x17garbage\xff\r\n\r\n", id="garbage"),
    pytest.param(b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", id="http/2.0-status-line"),
    pytest.param(b"HTTP/1.1 600 Weird\r\nContent-Length: 0\r\n\r\n", id="status-out-of-range"),
    pytest.param(b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", id="bare-lf"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n", id="nul-in-value"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 0\r\n\r\n", id="cr-in-value"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n", id="obs-fold"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX : a\r\nContent-Length: 0\r\n\r\n", id="space-before-colon"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", id="duplicate-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", id="conflicting-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", id="length-list"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok", id="negative-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                 id="length-and-chunked"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx", id="transfer-encoding-gzip"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", id="gzip-chunked"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                 id="chunked-twice"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n", id="bad-chunk-size"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokEXTRA\r\n0\r\n\r\n", id="chunk-too-long"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n", id="chunk-size-overflow"),
    pytest.param(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x00",
                 id="101-switching"),
    pytest.param(b"HTTP/1.1 150 Odd\r\nContent-Length: 3\r\n\r\nabc" + ok(), id="interim-with-body"),
    pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n" * 9 + ok(), id="endless-interim-answers"),
    pytest.param(b"HTTP/1.1 200 " + b"x" * (1024 * 1024) + b"\r\n\r\n", id="1-mb-status-line"),
    pytest.param(b"HTTP/1.1 200 OK\r\n" + b"X-Header: value\r\n" * 200 + b"\r\n", id="too-many-headers"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-Big: " + b"v" * 70000 + b"\r\n\r\n", id="head-over-the-bound"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + b"X-Trailer: t\r\n" * 6000,
                 id="endless-trailers"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;" + b"e" * 70000, id="endless-chunk-extension"),
]


@pytest.mark.parametrize("wire", BROKEN)
async def test_a_broken_answer_fails_and_the_next_request_gets_a_fresh_connection(pool, wire):
    # The upstream keeps the broken connection open: the refusal must not wait for it to close.
    async with raw_upstream(lambda r: [wire, HANG] if r.connection == 1 else [ok(b"fresh")]) as upstream:
        origin = origin_of(pool, upstream.port)
        started = time.monotonic()
        with pytest.raises(http1.BadResponse):
            await fetch(pool, origin, read_timeout=5)
        assert time.monotonic() - started < 2
        assert (await fetch(pool, origin))[2] == b"fresh"
    assert upstream.requests[-1].connection == 2


async def test_an_endless_header_stream_is_cut_at_the_bound(pool):
    endless: list[Step] = [b"HTTP/1.1 200 OK\r\n"]
    for _ in range(400):                              # 400 KB of headers, written as they would trickle in
        endless += [b"X-More: " + b"m" * 990 + b"\r\n", 0.0]
    async with raw_upstream(lambda r: [*endless, HANG]) as upstream:
        with pytest.raises(http1.HeadTooLarge):
            await fetch(pool, origin_of(pool, upstream.port), read_timeout=5)


@pytest.mark.parametrize("wire", [
    pytest.param([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", CLOSE], id="body-shorter-than-its-length"),
    pytest.param([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nhal", CLOSE], id="close-mid-chunk"),
    pytest.param([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", CLOSE], id="close-before-last-chunk"),
    pytest.param([b"HTTP/1.1 200 OK\r\nContent-Len", CLOSE], id="close-mid-head"),
])
async def test_an_answer_cut_short_fails_with_the_bytes_that_were_framed(pool, wire):
    async with raw_upstream(lambda r: wire if r.connection == 1 else [ok(b"fresh")]) as upstream:
        origin = origin_of(pool, upstream.port)
        received = b""
        with pytest.raises(http1.ConnectionClosed):
            async with pool.request(origin, "GET", "/", HOST_HEADER, connect_timeout=2, read_timeout=2) as answer:
                while chunk := await answer.read():
                    received += chunk
        assert received in (b"", b"short", b"hal", b"abc")
        assert (await fetch(pool, origin))[2] == b"fresh"


@pytest.mark.parametrize("delay", [None, 0.05], ids=["same-write", "later"])
async def test_bytes_after_a_complete_answer_are_never_the_next_answer(pool, delay):
    smuggled = ok(b"SMUGGLED")

    def answer(r: RawRequest) -> list[Step]:
        if r.connection == 1 and r.index == 1:
            return [ok(b"first") + smuggled] if delay is None else [ok(b"first"), delay, smuggled]
        return [ok(b"honest")]

    async with raw_upstream(answer) as upstream:
        origin = origin_of(pool, upstream.port)
        assert (await fetch(pool, origin))[2] == b"first"
        if delay:
            # The smuggled bytes reach the pooled connection, which then leaves the pool.
            await eventually(lambda: pool.idle_count() == 0, "the spoiled connection dropped")
        assert (await fetch(pool, origin))[2] == b"honest"
    assert upstream.requests[-1].connection == 2


# --- stale connections and the one retry ---

async def test_a_connection_the_upstream_closed_while_idle_is_not_used(pool):
    async with raw_upstream(lambda r: [ok(), 0.01, CLOSE]) as upstream:
        origin = origin_of(pool, upstream.port)
        await fetch(pool, origin)
        await eventually(lambda: pool.idle_count() == 0, "the idle close seen by the pool")
        status, _, _ = await fetch(pool, origin, "POST", body=chunks(b"not replayable"))
    assert status == 200 and upstream.connections == 2 and len(upstream.requests) == 2


@pytest.mark.parametrize("method,body,retried", [
    ("GET", None, True), ("HEAD", None, True), ("OPTIONS", None, True),
    ("POST", b"once", False), ("PUT", b"once", False), ("DELETE", None, False), ("GET", b"body", False),
])
async def test_a_reused_connection_closed_before_answering_is_retried_only_when_safe(pool, method, body, retried):
    # The second request on the first connection meets a close: the race with an upstream's idle timeout.
    async with raw_upstream(lambda r: [CLOSE] if (r.connection, r.index) == (1, 2) else [ok()]) as upstream:
        origin = origin_of(pool, upstream.port)
        await fetch(pool, origin)
        if retried:
            status, _, _ = await fetch(pool, origin, method, body=None if body is None else chunks(body))
            assert status == 200
        else:
            with pytest.raises(http1.ConnectionClosed):
                await fetch(pool, origin, method, body=None if body is None else chunks(body))
    assert len(upstream.requests) == (3 if retried else 2)


async def test_a_fresh_connection_closed_before_answering_is_not_retried(pool):
    async with raw_upstream(lambda r: [CLOSE]) as upstream:
        with pytest.raises(http1.ConnectionClosed) as caught:
            await fetch(pool, origin_of(pool, upstream.port))
    assert not caught.value.answered and len(upstream.requests) == 1


async def test_no_retry_once_an_answer_started(pool):
    async with raw_upstream(lambda r: [b"HTTP/1.1 200 OK\r\n", CLOSE] if (r.connection, r.index) == (1, 2)
                            else [ok()]) as upstream:
        origin = origin_of(pool, upstream.port)
        await fetch(pool, origin)
        with pytest.raises(http1.ConnectionClosed) as caught:
            await fetch(pool, origin)
    assert caught.value.answered and len(upstream.requests) == 2


# --- timeouts ---

async def test_an_upstream_that_never_answers_times_out(pool):
    async with raw_upstream(lambda r: [HANG]) as upstream:
        started = time.monotonic()
        with pytest.raises(http1.ReadTimeout):
            await fetch(pool, origin_of(pool, upstream.port), read_timeout=0.3)
    assert 0.25 < time.monotonic() - started < 2


async def test_the_read_timeout_is_per_read(pool):
    trickle: list[Step] = []
    for byte in ok(b"slow but steady"):
        trickle += [bytes([byte]), 0.02]
    async with raw_upstream(lambda r: trickle) as upstream:
        started = time.monotonic()
        assert (await fetch(pool, origin_of(pool, upstream.port), read_timeout=0.3))[2] == b"slow but steady"
    assert time.monotonic() - started > 0.6          # longer than read_timeout in all


async def test_a_body_that_stops_mid_answer_times_out_and_its_connection_is_dropped(pool):
    async with raw_upstream(lambda r: [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", HANG]
                            if r.connection == 1 else [ok()]) as upstream:
        origin = origin_of(pool, upstream.port)
        with pytest.raises(http1.ReadTimeout):
            await fetch(pool, origin, read_timeout=0.3)
        assert (await fetch(pool, origin))[2] == b"ok"
    assert upstream.requests[-1].connection == 2


@pytest.mark.parametrize("how", ["stops-reading", "raises"])
async def test_a_caller_that_leaves_before_the_end_of_the_body_does_not_leave_its_connection(pool, how):
    """A client that went away: the rest of the answer is still on the wire, so the connection goes too."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"
    async with raw_upstream(lambda r: [head, b"x" * 1000, 0.05, b"x" * 999000] if r.connection == 1
                            else [ok()]) as upstream:
        origin = origin_of(pool, upstream.port)
        with pytest.raises(ConnectionResetError) if how == "raises" else contextlib.nullcontext():
            async with pool.request(origin, "GET", "/", HOST_HEADER, connect_timeout=2, read_timeout=2) as answer:
                assert await answer.read()
                if how == "raises":
                    raise ConnectionResetError("the client went away")
        assert pool.idle_count() == 0
        assert (await fetch(pool, origin))[2] == b"ok"
    assert upstream.requests[-1].connection == 2


async def test_no_read_timeout_while_the_request_body_is_still_going_out(pool):
    async with raw_upstream(lambda r: [ok()]) as upstream:
        status, _, _ = await fetch(pool, origin_of(pool, upstream.port), "POST",
                                   body=chunks(b"a", b"b", b"c", b"d", pause=0.15), read_timeout=0.3)
    assert status == 200 and upstream.requests[0].body == b"abcd"


async def test_an_upstream_that_stops_reading_the_body_times_out(pool):
    async def big() -> AsyncIterator[bytes]:
        chunk = b"u" * 65536
        for _ in range(1024):
            yield chunk

    async with raw_upstream(lambda r: [NO_BODY_READ, HANG]) as upstream:
        with pytest.raises(http1.WriteTimeout):
            await fetch(pool, origin_of(pool, upstream.port), "POST", body=big(), read_timeout=0.3)


async def test_connect_timeout_covers_the_tls_handshake(pool):
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()                          # a TCP server that never speaks TLS

    server = await asyncio.start_server(silent, HOST, 0)
    try:
        port = server.sockets[0].getsockname()[1]
        started = time.monotonic()
        with pytest.raises(http1.ConnectTimeout):
            await fetch(pool, pool.origin(f"https://{HOST}:{port}"), connect_timeout=0.3)
        assert time.monotonic() - started < 2
    finally:
        server.close()


async def test_a_refused_connection_fails_to_connect(pool):
    from tests.harness.servers import refused_port
    with refused_port() as port:
        with pytest.raises(http1.ConnectFailed):
            await fetch(pool, origin_of(pool, port))


# --- bounded buffers ---

async def test_a_slow_reader_pauses_the_upstream(pool):
    size, piece = 64 * 1024 * 1024, b"d" * (1024 * 1024)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size
    async with raw_upstream(lambda r: [head, *([piece] * (size // len(piece)))]) as upstream:
        origin = origin_of(pool, upstream.port)
        async with pool.request(origin, "GET", "/", HOST_HEADER, connect_timeout=2, read_timeout=5) as answer:
            # The caller's client is slow: nothing is taken, so the connection stops reading.
            await eventually(lambda: any(conn._reading_paused for conn in pool._open), "reading paused")
            [conn] = pool._open
            assert conn._reading_paused and conn._buffered <= http1.Limits().high_water + 256 * 1024
            received = 0
            while chunk := await answer.read():
                received += len(chunk)
        assert received == size


async def test_a_chunked_upload_waits_for_a_slow_upstream(pool):
    written = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal written
        chunk = b"u" * 65536
        for _ in range(512):                         # 32 MiB
            written += len(chunk)
            yield chunk

    async with raw_upstream(lambda r: [NO_BODY_READ, HANG]) as upstream:
        task = asyncio.ensure_future(fetch(pool, origin_of(pool, upstream.port), "POST", body=counted(), read_timeout=5))
        await steady(lambda: written, "the upload")
        assert written < 16 * 1024 * 1024            # socket buffers and one transport high-water, not the body
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# --- the pool ---

async def test_idle_connections_expire():
    pool = http1.Pool(idle_timeout=0.2)
    try:
        async with raw_upstream(lambda r: [ok()]) as upstream:
            await fetch(pool, origin_of(pool, upstream.port))
            assert pool.idle_count() == 1
            await eventually(lambda: pool.idle_count() == 0, "the idle connection expired")
            await eventually(lambda: upstream.closed == 1, "the expired connection closed")
    finally:
        await pool.close()


async def test_idle_connections_are_bounded_per_origin(pool):
    async with raw_upstream(lambda r: [0.1, ok()]) as upstream:
        origin = origin_of(pool, upstream.port, max_idle=2)
        await asyncio.gather(*(fetch(pool, origin) for _ in range(5)))
        assert upstream.connections == 5 and pool.idle_count() == 2


async def test_origins_are_shared_by_key_and_tls_settings_make_another(pool):
    a = pool.origin(f"http://{HOST}:8080")
    assert pool.origin(f"http://{HOST}:8080/") is a
    assert pool.origin(f"https://{HOST}:8080") is not a
    assert pool.origin(f"https://{HOST}:8080", http1.TlsSettings(server_name="x.internal")) is not \
        pool.origin(f"https://{HOST}:8080")
    with pytest.raises(ValueError):
        pool.origin(f"http://{HOST}:8080", http1.TlsSettings())


async def test_an_early_answer_ends_the_upload_and_the_connection(pool):
    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 65536

    too_large = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n"
    async with raw_upstream(lambda r: [NO_BODY_READ, too_large, HANG] if r.connection == 1 else [ok()]) as upstream:
        origin = origin_of(pool, upstream.port)
        status, _, _ = await fetch(pool, origin, "POST", body=endless())
        assert status == 413
        assert (await fetch(pool, origin))[0] == 200
    assert upstream.requests[-1].connection == 2
