"""proxy.transport.h2.server under the resource attacks of the security review (/tmp/rev): each test drives one connection's
protocol object with a fake transport and clock, and asserts the bound — work done, bytes held, GOAWAY code."""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import hpack
import pytest

from proxy.transport.h2.server import H2GrpcProtocol, H2GrpcServer
from proxy.transport.h2.frames import (
    CONTINUATION, DATA, END_HEADERS, END_STREAM, ENHANCE_YOUR_CALM, FLOW_CONTROL_ERROR, GOAWAY, HEADERS,
    INITIAL_WINDOW_SIZE, NO_ERROR, PING, PREFACE, REFUSED_STREAM, RST_STREAM, SETTINGS, STREAM_CLOSED,
    WINDOW_UPDATE, frame, rst_stream, settings, window_update,
)
from proxy.transport.h2.limits import H2Limits

METHOD = "/envoy.service.auth.v3.Authorization/Check"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Handler:
    calls: int = 0
    running: int = 0
    cancelled: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    hold: bool = True
    stubborn: bool = False       # outlives one cancellation, like a shielded audit write

    async def __call__(self, message: bytes, peer: str, metadata: object) -> bytes:
        self.calls += 1
        self.running += 1
        try:
            if self.hold:
                try:
                    await self.release.wait()
                except asyncio.CancelledError:
                    self.cancelled += 1
                    if not self.stubborn:
                        raise
                    await self.release.wait()
            return b"D" * 400
        finally:
            self.running -= 1


class Transport(asyncio.Transport):
    """Collects what the server writes; pauses the protocol past `high_water` bytes until drain()."""

    def __init__(self, peer: str = "10.0.0.7", high_water: int = 1 << 30) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = self.aborted = self.paused = False
        self.reading = True
        self.peer, self.high_water = peer, high_water
        self.protocol: H2GrpcProtocol | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data
        if len(self.out) > self.high_water and not self.paused and self.protocol is not None:
            self.paused = True
            self.protocol.pause_writing()

    def drain(self) -> None:
        """The peer reads everything."""
        self.out.clear()
        if self.paused and self.protocol is not None:
            self.paused = False
            self.protocol.resume_writing()

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


@dataclass
class Frame:
    kind: int
    flags: int
    stream: int
    payload: bytes


class Conn:
    def __init__(self, server: H2GrpcServer, transport: Transport) -> None:
        self.protocol, self.transport = server.protocol(), transport
        transport.protocol = self.protocol
        self.encoder = hpack.Encoder()
        self.protocol.connection_made(transport)

    def feed(self, *frames: bytes) -> None:
        self.protocol.data_received(b"".join(frames))

    def call(self, stream: int, message: bytes = b"hello", end: bool = True) -> bytes:
        block = self.encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", METHOD),
                                     (":authority", "x"), ("content-type", "application/grpc")])
        body = b"\0" + len(message).to_bytes(4, "big") + message
        return frame(HEADERS, END_HEADERS, stream, block) + frame(DATA, END_STREAM if end else 0, stream, body)

    def frames(self) -> list[Frame]:
        out, seen, offset = bytes(self.transport.out), [], 0
        while offset + 9 <= len(out):
            length = int.from_bytes(out[offset:offset + 3], "big")
            seen.append(Frame(out[offset + 3], out[offset + 4], int.from_bytes(out[offset + 5:offset + 9], "big"),
                              out[offset + 9:offset + 9 + length]))
            offset += 9 + length
        self.transport.out.clear()
        return seen

    def goaway_code(self) -> int | None:
        codes = [struct.unpack(">II", f.payload)[1] for f in self.frames() if f.kind == GOAWAY]
        return codes[-1] if codes else None


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def handler() -> Handler:
    return Handler()


@pytest.fixture
async def make(clock: Clock, handler: Handler) -> AsyncIterator[Callable[..., tuple[H2GrpcServer, Conn]]]:
    conns: list[Conn] = []

    def _make(peer: str = "10.0.0.7", high_water: int = 1 << 30, server: H2GrpcServer | None = None,
              **limits: Any) -> tuple[H2GrpcServer, Conn]:
        server = server or H2GrpcServer(handler, METHOD, max_message_bytes=1024, limits=H2Limits(**limits), clock=clock)
        conn = Conn(server, Transport(peer, high_water))
        conn.feed(PREFACE, settings())
        conn.frames()
        conns.append(conn)
        return server, conn

    yield _make
    handler.release.set()
    for conn in conns:
        conn.protocol.connection_lost(None)
    await settle()


async def settle() -> None:
    """Let the tasks the server created run as far as they can (no I/O involved: a bounded number of turns)."""
    for _ in range(10):
        await asyncio.sleep(0)


# -- 1. rapid reset, repeated END_STREAM, tasks outliving their streams ---------------------------------------

async def test_rapid_reset_ends_in_enhance_your_calm_and_runs_no_handler(make, handler):
    server, conn = make(reset_burst=50, reset_rate=0.0)
    conn.feed(*(conn.call(s) + rst_stream(s, 8) for s in range(1, 2000, 2)))
    assert conn.goaway_code() == ENHANCE_YOUR_CALM and conn.transport.closed
    await settle()
    assert handler.calls == 0 and server.calls_running == 0      # each task was cancelled before it started
    assert server.refusals.counts == {"rapid_reset": 1}


async def test_reset_cancels_a_running_handler_and_frees_its_slot(make, handler):
    server, conn = make()
    conn.feed(*(conn.call(s) for s in (1, 3, 5)))
    await settle()
    assert handler.running == 3
    conn.feed(*(rst_stream(s, 8) for s in (1, 3, 5)))
    await settle()
    assert handler.cancelled == 3 and handler.running == 0 and server.calls_running == 0
    assert conn.protocol._streams == {}


async def test_stream_limit_counts_handlers_still_running_after_a_reset(make, handler):
    handler.stubborn = True
    server, conn = make(max_streams=4)
    conn.feed(*(conn.call(s) for s in (1, 3, 5, 7)))
    await settle()
    conn.feed(*(rst_stream(s, 8) for s in (1, 3, 5, 7)))
    await settle()
    assert handler.cancelled == 4 and server.calls_running == 4       # reset, but their handlers still run
    conn.feed(conn.call(9))
    refused = [f for f in conn.frames() if f.kind == RST_STREAM]
    assert [(f.stream, f.payload) for f in refused] == [(9, struct.pack(">I", REFUSED_STREAM))]
    handler.release.set()
    await settle()
    assert server.calls_running == 0 and conn.protocol._streams == {}
    conn.feed(conn.call(11))                                          # the slots are free again
    await settle()
    assert handler.calls == 5


async def test_running_handlers_are_capped_per_server(make, handler):
    server, first = make(max_calls=3)
    first.feed(first.call(1), first.call(3))
    _, second = make(server=server)
    second.feed(second.call(1), second.call(3))
    await settle()
    assert handler.calls == 3 and server.calls_running == 3
    assert [f.stream for f in second.frames() if f.kind == RST_STREAM] == [3]


async def test_repeated_end_stream_is_a_stream_error_and_runs_the_handler_once(make, handler):
    _, conn = make()
    conn.feed(conn.call(1))
    await settle()
    conn.feed(*[frame(DATA, END_STREAM, 1)] * 500)
    await settle()
    frames = conn.frames()
    assert handler.calls == 1 and handler.cancelled == 1
    assert [(f.stream, f.payload) for f in frames if f.kind == RST_STREAM] == [(1, struct.pack(">I", STREAM_CLOSED))]
    assert not any(f.kind == GOAWAY for f in frames)


async def test_headers_after_end_stream_is_stream_closed(make, handler):
    _, conn = make()
    conn.feed(conn.call(1))
    conn.feed(frame(HEADERS, END_HEADERS | END_STREAM, 1, conn.encoder.encode([(":method", "POST")])))
    assert [f.payload for f in conn.frames() if f.kind == RST_STREAM] == [struct.pack(">I", STREAM_CLOSED)]
    await settle()
    assert handler.calls == 0


async def test_connection_lost_cancels_every_handler(make, handler):
    server, conn = make()
    conn.feed(*(conn.call(s) for s in (1, 3, 5)))
    await settle()
    conn.protocol.connection_lost(None)
    await settle()
    assert handler.cancelled == 3 and server.calls_running == 0 and not server.connections


# -- 2. SETTINGS / WINDOW_UPDATE: no O(blocked) flush ----------------------------------------------------------

def count_sends(conn: Conn) -> list[int]:
    sends: list[int] = []
    outbox = conn.protocol._out
    original = outbox.send

    def counting(stream: int, *args: Any) -> None:
        sends.append(stream)
        original(stream, *args)

    outbox.send = counting        # type: ignore[method-assign]
    return sends


async def blocked_answers(make: Callable[..., tuple[H2GrpcServer, Conn]], handler: Handler, n: int, **limits: Any) -> Conn:
    handler.hold = False
    _, conn = make(**limits)
    conn.feed(settings((INITIAL_WINDOW_SIZE, 0)), *(conn.call(s) for s in range(1, 2 * n, 2)))
    await settle()
    assert sum(1 for s in conn.protocol._streams.values() if s.pending is not None) == n
    conn.frames()
    return conn


async def test_empty_settings_flush_nothing_and_are_rate_limited(make, handler):
    conn = await blocked_answers(make, handler, 200, settings_burst=20, settings_rate=0.0)
    sends = count_sends(conn)
    conn.feed(*[settings()] * 1000)
    assert sends == [] and conn.goaway_code() == ENHANCE_YOUR_CALM


async def test_connection_window_updates_visit_no_stream_blocked_on_its_own_window(make, handler):
    conn = await blocked_answers(make, handler, 200)
    sends = count_sends(conn)
    conn.feed(*[window_update(0, 1)] * 1000)
    assert sends == []
    conn.feed(window_update(7, 10_000))             # one stream's window: that stream, and only it, is answered
    assert sends == [7]
    assert [f.stream for f in conn.frames() if f.kind == HEADERS and f.flags & END_STREAM] == [7]


# -- 3. write backpressure: PING / SETTINGS floods -------------------------------------------------------------

async def test_a_peer_that_does_not_read_is_not_read_and_replies_stay_bounded(make):
    _, conn = make(high_water=4096, ping_burst=10**6)
    ping = frame(PING, 0, 0, b"12345678")
    conn.feed(ping * 50_000)                       # 850 kB of PINGs in one read
    assert not conn.transport.reading
    assert len(conn.transport.out) <= 4096 + len(ping)
    conn.transport.drain()                          # the peer reads: a little more is answered, then a pause again
    assert not conn.transport.reading and len(conn.transport.out) <= 4096 + len(ping)


async def test_writes_stalled_past_the_deadline_abort_the_connection(make, clock):
    server, conn = make(high_water=100, write_timeout=5.0)
    conn.feed(frame(PING, 0, 0, b"12345678") * 20)
    clock.now += 4
    conn.protocol.check_deadlines()
    assert not conn.transport.closed
    clock.now += 2
    conn.protocol.check_deadlines()
    assert conn.transport.aborted and server.refusals.counts["write_timeout"] == 1


async def test_ping_flood_is_enhance_your_calm(make):
    _, conn = make(ping_burst=20, ping_rate=0.0)
    conn.feed(frame(PING, 0, 0, b"12345678") * 100)
    frames = conn.frames()
    assert sum(f.kind == PING for f in frames) == 20
    assert struct.unpack(">II", frames[-1].payload)[1] == ENHANCE_YOUR_CALM


# -- 4. inbound flow control and the per-connection body budget ------------------------------------------------

async def test_request_bytes_held_never_exceed_the_connection_window(make, handler):
    server, conn = make(connection_window=100_000)
    # Complete messages whose END_STREAM never comes: 200 x 1000 bytes against a 100 kB window.
    for s in range(1, 400, 2):
        conn.feed(conn.call(s, b"A" * 995, end=False))
        assert sum(len(state.body) for state in conn.protocol._streams.values()) <= 100_000
    assert conn.goaway_code() == FLOW_CONTROL_ERROR and handler.calls == 0


async def test_a_stream_past_its_advertised_window_is_reset(make, handler):
    _, conn = make()
    conn.feed(frame(SETTINGS, 1, 0))                   # our SETTINGS acknowledged: 1024 + 5 bytes per stream
    block = conn.encoder.encode([(":method", "POST"), (":path", METHOD), ("content-type", "application/grpc")])
    conn.feed(frame(HEADERS, END_HEADERS, 1, block), frame(DATA, 0, 1, b"\0" + (1000).to_bytes(4, "big") + b"A" * 1000),
              frame(DATA, 0, 1, b"A" * 100))
    assert [f.payload for f in conn.frames() if f.kind == RST_STREAM] == [struct.pack(">I", FLOW_CONTROL_ERROR)]
    assert conn.protocol._streams == {}


async def test_bytes_of_finished_and_dropped_streams_give_the_window_back(make, handler):
    handler.hold = False
    _, conn = make(connection_window=65535 * 2)
    for s in range(1, 400, 2):
        conn.feed(conn.call(s, b"x" * 1000))
    await settle()
    granted = sum(struct.unpack(">I", f.payload)[0] for f in conn.frames() if f.kind == WINDOW_UPDATE and f.stream == 0)
    assert granted >= 200 * 1005 - 65535 and handler.calls == 200
    assert conn.protocol._recv_window > 0


# -- 5. deadlines and connection caps --------------------------------------------------------------------------

async def test_no_preface_within_the_deadline_closes(handler, clock):
    server = H2GrpcServer(handler, METHOD, max_message_bytes=1024, limits=H2Limits(preface_timeout=10.0), clock=clock)
    conn = Conn(server, Transport())
    conn.feed(PREFACE[:10])
    clock.now += 11
    conn.protocol.check_deadlines()
    assert conn.transport.closed and server.refusals.counts["preface_timeout"] == 1
    conn.protocol.connection_lost(None)


async def test_a_header_block_left_open_closes_and_continuations_are_counted(make, clock):
    _, conn = make(header_timeout=10.0)
    conn.feed(frame(HEADERS, 0, 1, b"\x83"))
    clock.now += 11
    conn.protocol.check_deadlines()
    assert conn.goaway_code() == ENHANCE_YOUR_CALM
    _, conn = make(max_continuations=16)
    conn.feed(frame(HEADERS, 0, 1, b"\x83"), *[frame(CONTINUATION, 0, 1)] * 100)
    assert conn.goaway_code() == ENHANCE_YOUR_CALM


async def test_an_unfinished_stream_is_reset_at_its_deadline_and_releases_its_body(make, clock, handler):
    _, conn = make(stream_timeout=30.0)
    conn.feed(conn.call(1, b"x" * 500, end=False))
    assert conn.protocol._streams[1].held > 0
    clock.now += 31
    conn.protocol.check_deadlines()
    assert [f.stream for f in conn.frames() if f.kind == RST_STREAM] == [1] and conn.protocol._streams == {}


async def test_an_idle_connection_gets_goaway(make, clock):
    _, conn = make(idle_timeout=300.0)
    clock.now += 299
    conn.protocol.check_deadlines()
    assert not conn.transport.closed
    clock.now += 2
    conn.protocol.check_deadlines()
    assert conn.goaway_code() == NO_ERROR and conn.transport.closed


async def test_connections_are_capped_per_peer_and_in_total(make):
    server, _ = make(max_connections_per_peer=2, max_connections=3)
    _, second = make(server=server)
    _, third = make(server=server)                       # the same peer's third
    _, other = make(server=server, peer="10.0.0.8")
    _, fourth = make(server=server, peer="10.0.0.9")     # the fourth in total
    assert not second.transport.aborted and not other.transport.aborted
    assert third.transport.aborted and fourth.transport.aborted
    assert server.refusals.counts == {"too_many_peer_connections": 1, "too_many_connections": 1}
    second.protocol.connection_lost(None)
    _, again = make(server=server)
    assert not again.transport.aborted


async def test_a_half_preface_socket_is_closed_by_the_timer(handler):
    server = H2GrpcServer(handler, METHOD, max_message_bytes=1024, limits=H2Limits(preface_timeout=0.05, tick=0.01))
    port = await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(PREFACE[:10])
        data = await asyncio.wait_for(reader.read(), 5)          # returns only once the server has closed
        assert data[-17 + 3] == GOAWAY and reader.at_eof()
        writer.close()
    finally:
        await server.stop(0.1)


# -- 6. queued answers of reset streams are dropped ------------------------------------------------------------

async def test_reset_drops_the_stream_queued_answer(make, handler):
    conn = await blocked_answers(make, handler, 100)
    conn.feed(*(rst_stream(s, 8) for s in range(1, 200, 2)))
    assert conn.protocol._streams == {} and conn.protocol._out.ready == {}
    conn.feed(settings((INITIAL_WINDOW_SIZE, 65535)), window_update(0, 1 << 20))
    assert not any(f.kind == DATA for f in conn.frames())


# -- 7. peers outside trusted_proxies --------------------------------------------------------------------------

async def test_an_untrusted_peer_is_closed_at_connect_counted_and_logged_at_a_bounded_rate(handler, clock, caplog):
    refused: list[str] = []
    server = H2GrpcServer(handler, METHOD, max_message_bytes=1024, admit=lambda peer: peer == "10.0.0.1",
                          on_refuse=refused.append, clock=clock)
    caplog.set_level(logging.WARNING, "idgate.grpc")
    for _ in range(1000):
        conn = Conn(server, Transport("10.9.9.9"))
        assert conn.transport.aborted and conn.transport.out == b""
        conn.feed(PREFACE, conn.call(1))                 # asyncio would not deliver it; nothing happens if it did
        conn.protocol.connection_lost(None)
    clock.now += 11
    Conn(server, Transport("10.9.9.9")).protocol.connection_lost(None)
    await settle()
    assert handler.calls == 0 and refused == ["untrusted_peer"] * 1001
    assert len(caplog.records) == 2 and "untrusted_peer: 1000" in caplog.records[1].getMessage()
    trusted = Conn(server, Transport("10.0.0.1"))
    assert not trusted.transport.aborted and trusted.transport.out[3] == SETTINGS
    trusted.protocol.connection_lost(None)


# -- fuzz: random frames never raise, never run a handler they should not --------------------------------------

async def test_random_frames_never_raise(make, handler):
    handler.hold = False
    rnd = random.Random(1)
    valid = 0
    for _ in range(400):
        server, conn = make()
        frames = []
        for _ in range(rnd.randint(1, 6)):
            payload = bytes(rnd.getrandbits(8) for _ in range(rnd.choice([0, 1, 4, 5, 6, 8, 9, 12, 30])))
            frames.append(frame(rnd.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0xFF]),
                                rnd.choice([0, 1, 4, 5, 8, 0x20, 0x2D, 0xFF]), rnd.choice([0, 1, 2, 3, 5, 0x7FFFFFFF]),
                                payload))
        if rnd.random() < 0.3:
            frames.insert(0, conn.call(1))
            valid += 1
        conn.feed(*frames)
        await settle()
        conn.protocol.connection_lost(None)
    await settle()
    assert handler.calls <= valid and server.calls_running == 0
