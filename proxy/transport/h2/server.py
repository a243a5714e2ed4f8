"""A small HTTP/2 server (cleartext, prior knowledge) for unary gRPC calls on idgate's shared event loop: what
Envoy's ext_authz client speaks, at a fraction of grpcio's per-call cost (see bench/bench_envoy.py).

Scope, deliberately narrow: one unary method, no server push, no compression, no priorities.  The
framing follows RFC 9113 and the HPACK state follows RFC 7541 (decoded with the `hpack` package); a
peer that breaks either gets GOAWAY and a closed connection, so Envoy fails closed.

The loop is shared with every other idgate surface, so no peer may make it do unbounded work or hold
unbounded memory (the numbers are proxy.transport.h2.limits.H2Limits): streams carry their RFC 9113 state
and a reset cancels the stream's handler; handler tasks are capped per connection and per server;
resets, SETTINGS and PINGs spend rate budgets (GOAWAY ENHANCE_YOUR_CALM when spent); the receive
windows we advertise are enforced (a connection buffers at most `connection_window` request bytes);
a peer that does not read stops being read (pause_writing); prefaces, header blocks, streams, idle
connections and stalled writes have deadlines; connections are capped in total and per peer.

A peer that is not in config.trusted_proxies is closed in connection_made, before any HTTP/2: it is
counted and logged at a bounded rate (proxy.transport.h2.limits.Refusals), and it leaves no audit record,
because the audit records decisions about requests and such a peer never got to make one.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from hpack.exceptions import HPACKError

from proxy.transport.h2.frames import (
    ACK, CANCEL, COMPRESSION_ERROR, CONTINUATION, DATA, DEFAULT_WINDOW, END_HEADERS, END_STREAM, ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR, FRAME_HEADER, FRAME_SIZE_ERROR, GOAWAY, GRPC_INTERNAL, GRPC_OK, GRPC_RESOURCE_EXHAUSTED,
    GRPC_UNIMPLEMENTED, HEADERS, INITIAL_WINDOW_SIZE, MAX_CONCURRENT_STREAMS, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE,
    MAX_WINDOW, NO_ERROR, OUR_MAX_FRAME, PING, PREFACE, PROTOCOL_ERROR, PUSH_PROMISE, REFUSED_STREAM, RST_STREAM,
    SETTINGS, STREAM_CLOSED, WINDOW_UPDATE, HeaderDecoder, frame, goaway, rst_stream, settings, strip, window_update,
)
from proxy.transport.h2.limits import Admission, Budget, Clock, H2Limits, Refusals
from proxy.transport.h2.outbox import CLOSED, HALF_CLOSED, OPEN, Outbox, Stream

log = logging.getLogger("idgate.grpc")

# Request headers the handler asked to see (name, value), in the order received: gRPC metadata.
Metadata = tuple[tuple[bytes, bytes], ...]
# gRPC message handler: (request message, peer address, metadata) -> response message.  It must not raise.
Handler = Callable[[bytes, str, Metadata], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class _Shared:
    """What every connection of one server shares."""

    handler: Handler
    method_path: bytes
    max_message: int
    limits: H2Limits
    admission: Admission
    connections: set[H2GrpcProtocol]
    clock: Clock
    metadata: frozenset[bytes]          # lower-case header names the handler is given


class H2GrpcProtocol(asyncio.Protocol):
    """One Envoy connection: frames in, unary calls to the handler, frames out."""

    def __init__(self, shared: _Shared) -> None:
        self._shared = shared
        self._limits = limits = shared.limits
        clock = shared.clock
        self._transport: asyncio.Transport | None = None
        self._peer = "unknown"
        self._admitted = False
        self._buffer = bytearray()
        self._preface_seen = False
        self._decoder = HeaderDecoder(limits.max_header_list)
        self._streams: dict[int, Stream] = {}          # in opening order, which the deadline sweep relies on
        self._out = Outbox(self._streams)
        self._last_stream = 0
        self._continuation: tuple[int, int, bytearray] | None = None     # (stream, flags, fragments)
        self._continuations = 0
        self._stream_window = min(shared.max_message + 5, MAX_WINDOW)    # advertised per stream
        self._stream_recv_initial = DEFAULT_WINDOW      # what a new stream may receive until our SETTINGS is acked
        self._settings_acked = False
        self._conn_window = max(limits.connection_window, DEFAULT_WINDOW)
        self._recv_window = self._conn_window
        self._recv_unacked = 0
        self._resets = Budget(limits.reset_burst, limits.reset_rate, clock)
        self._settings = Budget(limits.settings_burst, limits.settings_rate, clock)
        self._pings = Budget(limits.ping_burst, limits.ping_rate, clock)
        self._connected_at = self._active_at = self._header_at = self._paused_at = self._closing_at = clock()
        self._write_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False        # we sent GOAWAY: nothing more is read
        self._draining = False       # the peer sent GOAWAY: calls in flight finish, no new ones start

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport: uvloop's implement asyncio.Transport without subclassing it (no isinstance).
        transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        if not self._shared.admission.connect(self._peer):
            self._closing = True
            transport.abort()        # no HTTP/2 at all: not even our SETTINGS
            return
        self._admitted = True
        self._transport = self._out.transport = transport
        self._shared.connections.add(self)
        opening = settings((MAX_CONCURRENT_STREAMS, self._limits.max_streams), (INITIAL_WINDOW_SIZE, self._stream_window),
                           (MAX_HEADER_LIST_SIZE, self._limits.max_header_list))
        if self._conn_window > DEFAULT_WINDOW:
            opening += window_update(0, self._conn_window - DEFAULT_WINDOW)
        transport.write(opening)
        self._timer = asyncio.get_running_loop().call_later(self._limits.tick, self._on_tick)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._admitted:
            self._admitted = False
            self._shared.admission.disconnect(self._peer)
        self._shared.connections.discard(self)
        self._transport = self._out.transport = None
        self._cancel_all()

    def pause_writing(self) -> None:
        # The peer is not reading what we write: stop reading what it writes (and making answers to it).
        self._write_paused = True
        self._paused_at = self._shared.clock()
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()
            self._process()      # what was read before the pause

    async def shutdown(self, grace: float) -> None:
        """GOAWAY, let the calls in flight answer (for at most `grace` seconds), then close."""
        if self._transport is not None and not self._closing:
            self._closing = True
            self._closing_at = self._shared.clock()
            self._transport.write(goaway(self._last_stream, NO_ERROR))
        tasks = {s.task for s in self._streams.values() if s.task is not None}
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        if self._transport is not None:
            self._transport.close()

    def _goaway(self, code: int, reason: str) -> None:
        """End the connection: GOAWAY, no more reading, the calls in flight cancelled."""
        if self._transport is None or self._closing:
            return
        self._shared.admission.refusals.report(reason, self._peer)
        self._closing = True
        self._closing_at = self._shared.clock()
        self._transport.write(goaway(self._last_stream, code))
        self._cancel_all()
        self._transport.close()

    def _cancel_all(self) -> None:
        for state in self._streams.values():
            if state.task is not None:
                state.task.cancel()
        self._streams.clear()
        self._out.ready.clear()

    # -- deadlines ----------------------------------------------------------------------------

    def _on_tick(self) -> None:
        self.check_deadlines()
        if self._transport is not None:
            self._timer = asyncio.get_running_loop().call_later(self._limits.tick, self._on_tick)

    def check_deadlines(self) -> None:
        """Close what overstayed its deadline; runs every `tick` seconds (tests call it with their own clock)."""
        transport, limits, now = self._transport, self._limits, self._shared.clock()
        if transport is None:
            return
        stalled = now - self._closing_at if self._closing else now - self._paused_at if self._write_paused else 0.0
        if stalled > limits.write_timeout:
            # The peer does not read (our GOAWAY included): nothing more can be said to it.
            self._shared.admission.refusals.report("write_timeout", self._peer)
            self._cancel_all()
            transport.abort()
            return
        if self._closing:
            return
        if not self._preface_seen:
            if now - self._connected_at > limits.preface_timeout:
                self._goaway(PROTOCOL_ERROR, "preface_timeout")
            return
        if self._continuation is not None and now - self._header_at > limits.header_timeout:
            self._goaway(ENHANCE_YOUR_CALM, "header_timeout")
            return
        for stream, state in list(self._streams.items()):
            if now - state.opened <= limits.stream_timeout:
                break
            if state.state != CLOSED:
                transport.write(rst_stream(stream, CANCEL))
                self._close_stream(stream, state)
        if not self._streams and now - self._active_at > limits.idle_timeout:
            self._goaway(NO_ERROR, "idle")

    # -- reading ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer += data
        self._process()

    def _process(self) -> None:
        if not self._preface_seen:
            if not (self._buffer.startswith(PREFACE) or PREFACE.startswith(bytes(self._buffer[:len(PREFACE)]))):
                self._goaway(PROTOCOL_ERROR, "bad_preface")
                return
            if len(self._buffer) < len(PREFACE):
                return
            self._preface_seen = True
            del self._buffer[:len(PREFACE)]
        view = memoryview(self._buffer)
        offset = 0
        try:
            # Stop at a write pause: the rest is read on resume_writing, so replies cannot pile up.
            while len(view) - offset >= 9 and not self._closing and not self._write_paused:
                word, flags, stream = FRAME_HEADER.unpack_from(view, offset)
                length, kind = word >> 8, word & 0xFF
                if length > OUR_MAX_FRAME:
                    self._goaway(FRAME_SIZE_ERROR, "frame_too_large")
                    break
                if len(view) - offset - 9 < length:
                    break
                self._on_frame(kind, flags, stream & MAX_WINDOW, bytes(view[offset + 9: offset + 9 + length]))
                offset += 9 + length
        finally:
            view.release()
        if self._closing:
            self._buffer.clear()
        else:
            del self._buffer[:offset]

    def _on_frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if self._continuation is not None and kind != CONTINUATION:
            self._goaway(PROTOCOL_ERROR, "header_block_interrupted")
        elif kind == DATA:
            self._on_data(flags, stream, payload)
        elif kind == HEADERS:
            self._on_headers(flags, stream, payload)
        elif kind == CONTINUATION:
            self._on_continuation(flags, stream, payload)
        elif kind == SETTINGS:
            self._on_settings(flags, stream, payload)
        elif kind == PING:
            if stream != 0 or len(payload) != 8:
                self._goaway(PROTOCOL_ERROR, "bad_ping")
            elif not self._pings.spend():
                self._goaway(ENHANCE_YOUR_CALM, "ping_flood")
            elif not flags & ACK and self._transport is not None:
                self._transport.write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream, payload)
        elif kind == RST_STREAM:
            self._on_rst_stream(stream, payload)
        elif kind == GOAWAY:
            self._draining = True
        elif kind == PUSH_PROMISE:
            self._goaway(PROTOCOL_ERROR, "push_promise")
        # PRIORITY and unknown frame types are ignored (RFC 9113 §4.1, §5.3.2).

    def _on_rst_stream(self, stream: int, payload: bytes) -> None:
        if len(payload) != 4:
            self._goaway(FRAME_SIZE_ERROR, "bad_rst_stream")
        elif stream == 0 or stream > self._last_stream:
            self._goaway(PROTOCOL_ERROR, "rst_stream_on_idle_stream")
        elif (state := self._streams.get(stream)) is not None and state.state != CLOSED:
            # Envoy gave up on the call (its timeout): the answer goes nowhere, so it is not worked out.
            self._close_stream(stream, state)
            self._spend_reset()

    def _spend_reset(self) -> None:
        """A stream reset, refused or in error: cheap for the peer, work for us (CVE-2023-44487)."""
        if not self._resets.spend():
            self._goaway(ENHANCE_YOUR_CALM, "rapid_reset")

    def _stream_error(self, stream: int, state: Stream | None, code: int) -> None:
        if self._transport is not None:
            self._transport.write(rst_stream(stream, code))
        if state is not None:
            self._close_stream(stream, state)
        self._spend_reset()

    def _on_settings(self, flags: int, stream: int, payload: bytes) -> None:
        if stream != 0 or len(payload) % 6 or (flags & ACK and payload):
            self._goaway(FRAME_SIZE_ERROR if len(payload) % 6 else PROTOCOL_ERROR, "bad_settings")
            return
        if not self._settings.spend():
            self._goaway(ENHANCE_YOUR_CALM, "settings_flood")
            return
        if flags & ACK:
            if not self._settings_acked:    # the peer now holds each new stream to our advertised window
                self._settings_acked = True
                delta = self._stream_window - self._stream_recv_initial
                self._stream_recv_initial = self._stream_window
                for state in self._streams.values():
                    state.recv_window += delta
            return
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == INITIAL_WINDOW_SIZE and (value > MAX_WINDOW or not self._out.set_initial_window(value)):
                self._goaway(FLOW_CONTROL_ERROR, "bad_initial_window")
                return
            if key == MAX_FRAME_SIZE:
                if not 16384 <= value <= 16777215:
                    self._goaway(PROTOCOL_ERROR, "bad_max_frame_size")
                    return
                self._out.max_frame = value
        if self._transport is not None:
            self._transport.write(frame(SETTINGS, ACK, 0))
        self._out.flush()     # O(1) unless the SETTINGS made some stream's answer sendable

    def _on_window_update(self, stream: int, payload: bytes) -> None:
        if len(payload) != 4:
            self._goaway(FRAME_SIZE_ERROR, "bad_window_update")
            return
        increment = struct.unpack(">I", payload)[0] & MAX_WINDOW
        if stream == 0:
            if increment == 0:
                self._goaway(PROTOCOL_ERROR, "bad_window_update")
            elif not self._out.grow_connection(increment):
                self._goaway(FLOW_CONTROL_ERROR, "window_overflow")
            return
        if stream > self._last_stream:
            self._goaway(PROTOCOL_ERROR, "window_update_on_idle_stream")
            return
        state = self._streams.get(stream)
        if state is None or state.state == CLOSED:
            return
        if increment == 0:
            self._stream_error(stream, state, PROTOCOL_ERROR)
        elif not self._out.grow_stream(stream, state, increment):
            self._stream_error(stream, state, FLOW_CONTROL_ERROR)

    def _on_headers(self, flags: int, stream: int, payload: bytes) -> None:
        fragment = strip(flags, payload, priority=True)
        if fragment is None or stream == 0 or stream % 2 == 0:
            self._goaway(PROTOCOL_ERROR, "bad_headers")
        elif flags & END_HEADERS:
            self._on_header_block(stream, flags, fragment)
        else:
            self._continuation = (stream, flags, bytearray(fragment))
            self._continuations = 0
            self._header_at = self._shared.clock()

    def _on_continuation(self, flags: int, stream: int, payload: bytes) -> None:
        if self._continuation is None or self._continuation[0] != stream:
            self._goaway(PROTOCOL_ERROR, "unexpected_continuation")
            return
        first_flags, block = self._continuation[1], self._continuation[2]
        block += payload
        self._continuations += 1
        if len(block) > self._limits.max_header_list:
            self._goaway(PROTOCOL_ERROR, "header_block_too_large")
        elif self._continuations > self._limits.max_continuations:
            self._goaway(ENHANCE_YOUR_CALM, "continuation_flood")
        elif flags & END_HEADERS:
            self._continuation = None
            self._on_header_block(stream, first_flags, bytes(block))

    def _on_header_block(self, stream: int, flags: int, block: bytes) -> None:
        try:
            headers = self._decoder.decode(block)   # always, so the HPACK state stays in step with the peer
        except HPACKError as exc:
            self._goaway(COMPRESSION_ERROR, f"hpack_{type(exc).__name__}")
            return
        if (state := self._streams.get(stream)) is not None:
            # Unary calls have no request trailers; after END_STREAM nothing more may come.
            self._stream_error(stream, state, PROTOCOL_ERROR if state.state == OPEN else STREAM_CLOSED)
            return
        if stream <= self._last_stream:
            self._goaway(STREAM_CLOSED, "headers_on_closed_stream")
            return
        self._last_stream = stream
        if self._draining:
            return
        admission = self._shared.admission
        if len(self._streams) >= self._limits.max_streams or admission.calls >= self._limits.max_calls:
            self._stream_error(stream, None, REFUSED_STREAM)
            return
        now = self._active_at = self._shared.clock()
        state = Stream(opened=now, recv_window=self._stream_recv_initial, send_window=self._out.initial_window)
        fields = dict(headers)
        if self._shared.metadata:
            state.metadata = tuple((name, value) for name, value in headers if name in self._shared.metadata)
        if (fields.get(b":method") != b"POST" or not fields.get(b"content-type", b"").startswith(b"application/grpc")
                or fields.get(b":path", b"") != self._shared.method_path):
            state.refused = GRPC_UNIMPLEMENTED
        self._streams[stream] = state
        if flags & END_STREAM:
            state.state = HALF_CLOSED
            self._finish(stream, state)

    def _on_data(self, flags: int, stream: int, payload: bytes) -> None:
        size = len(payload)
        self._recv_window -= size
        if self._recv_window < 0:
            self._goaway(FLOW_CONTROL_ERROR, "connection_window_overrun")
            return
        state = self._streams.get(stream)
        if state is None or state.state != OPEN:
            self._release(size)     # discarded bytes give their window back
            if stream == 0 or stream > self._last_stream:
                self._goaway(PROTOCOL_ERROR, "data_on_idle_stream")
            elif state is not None and state.state == HALF_CLOSED:
                self._stream_error(stream, state, STREAM_CLOSED)
            return      # else a stream we reset or answered already: the bytes are dropped
        state.recv_window -= size
        state.held += size
        if state.recv_window < 0:
            self._stream_error(stream, state, FLOW_CONTROL_ERROR)
            return
        data = strip(flags, payload, priority=False)
        if data is None:
            self._goaway(PROTOCOL_ERROR, "bad_padding")
            return
        if not size and not flags & END_STREAM:
            self._spend_reset()     # an empty frame does nothing but cost us a parse
        if state.refused is None:
            state.body += data
            if len(state.body) >= 5 and int.from_bytes(state.body[1:5], "big") > self._shared.max_message:
                state.refused = GRPC_RESOURCE_EXHAUSTED
                self._finish(stream, state)     # answered before the message is read (RFC 9113 §8.1)
                return
        if flags & END_STREAM:
            state.state = HALF_CLOSED
            self._finish(stream, state)

    def _release(self, size: int) -> None:
        """Request bytes no longer held: top the connection window up once half of it is used."""
        self._recv_unacked += size
        if self._recv_unacked >= self._conn_window // 2 and self._transport is not None:
            self._recv_window += self._recv_unacked
            self._transport.write(window_update(0, self._recv_unacked))
            self._recv_unacked = 0

    # -- answering ----------------------------------------------------------------------------

    def _finish(self, stream: int, state: Stream) -> None:
        """The request is complete (or refused already): answer a refusal now, or run the handler."""
        if state.refused is None:
            body = state.body
            if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
                # Compressed (flag 1) or a length that disagrees with the bytes sent.
                state.refused = GRPC_UNIMPLEMENTED if len(body) >= 5 and body[0] == 1 else GRPC_INTERNAL
        message, state.body = bytes(state.body[5:]), bytearray()
        self._release(state.held)
        state.held = 0
        if state.refused is not None:
            text = "message larger than the limit" if state.refused == GRPC_RESOURCE_EXHAUSTED else ""
            self._out.respond(stream, None, state.refused, text)
            return
        admission = self._shared.admission
        admission.calls += 1
        task = state.task = asyncio.get_running_loop().create_task(self._call(stream, message, state.metadata))
        task.add_done_callback(lambda done: self._call_done(stream, done))

    def _call_done(self, stream: int, task: asyncio.Task[None]) -> None:
        self._shared.admission.calls -= 1
        state = self._streams.get(stream)
        if state is not None and state.task is task and state.state == CLOSED:
            del self._streams[stream]       # reset while it ran: the slot is free only now

    async def _call(self, stream: int, message: bytes, metadata: Metadata) -> None:
        try:
            answer = await self._shared.handler(message, self._peer, metadata)
        except Exception:   # noqa: BLE001 - the handler should not raise; if it does, the call fails, never allows
            log.exception("gRPC handler failed")
            self._out.respond(stream, None, GRPC_INTERNAL, "internal error")
            return
        self._out.respond(stream, answer, GRPC_OK)

    def _close_stream(self, stream: int, state: Stream) -> None:
        """Reset (by either side): its answer and queued output are dropped, its handler cancelled."""
        self._out.ready.pop(stream, None)
        state.state, state.pending, state.body = CLOSED, None, bytearray()
        self._release(state.held)
        state.held = 0
        if state.task is not None and not state.task.done():
            state.task.cancel()     # _call_done forgets the stream once the task has ended
        else:
            self._streams.pop(stream, None)


class H2GrpcServer:
    """A listening socket and its connections; stop() ends both (asyncio's Server leaves connections open)."""

    def __init__(self, handler: Handler, method_path: str, *, max_message_bytes: int, limits: H2Limits = H2Limits(),
                 admit: Callable[[str], bool] | None = None, on_refuse: Callable[[str], None] | None = None,
                 clock: Clock = time.monotonic, metadata: frozenset[bytes] = frozenset()) -> None:
        """`admit(peer address)` says whether a peer may connect at all (None: anyone); `on_refuse(reason)`
        hears of every connection refused or closed for misbehaving (a metric); `metadata` names the request
        headers (lower case) the handler is given (say, the trace context)."""
        self.refusals = Refusals(clock, limits.report_interval, on_refuse)
        self._shared = _Shared(handler, method_path.encode(), max_message_bytes, limits,
                               Admission(limits, admit, self.refusals), set(), clock, metadata)
        self._server: asyncio.Server | None = None

    @property
    def connections(self) -> set[H2GrpcProtocol]:
        return self._shared.connections

    @property
    def calls_running(self) -> int:
        return self._shared.admission.calls

    def protocol(self) -> H2GrpcProtocol:
        """A connection's protocol object (the listening socket makes one per connection; tests drive one)."""
        return H2GrpcProtocol(self._shared)

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.protocol, host, port, reuse_port=reuse_port or None, backlog=1024)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, grace: float) -> None:
        if self._server is None:
            return
        self._server.close()
        await asyncio.gather(*(c.shutdown(grace) for c in list(self._shared.connections)))
        await self._server.wait_closed()
        self._server = None
