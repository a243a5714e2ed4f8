"""A small HTTP/2 server (cleartext, prior knowledge) for unary gRPC calls on idgate's event loop: what
Envoy's ext_authz client speaks, at a fraction of grpcio's per-call cost (see bench/bench_envoy.py).

Scope, deliberately narrow: one unary method, no server push, no compression, no priorities.  The
framing follows RFC 9113 and the HPACK state follows RFC 7541 (decoded with the `hpack` package); a
peer that breaks either gets GOAWAY and a closed connection, so Envoy fails closed.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import hpack
from hpack.exceptions import HPACKError

log = logging.getLogger("idgate.grpc")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
# Error codes (RFC 9113 §7).
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED, FRAME_SIZE_ERROR = 0x0, 0x1, 0x3, 0x5, 0x6
REFUSED_STREAM, COMPRESSION_ERROR = 0x7, 0x9
# Settings identifiers.
HEADER_TABLE_SIZE, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x1, 0x3, 0x4, 0x5, 0x6
# gRPC status codes.
GRPC_OK, GRPC_INTERNAL, GRPC_UNIMPLEMENTED, GRPC_RESOURCE_EXHAUSTED = 0, 13, 12, 8

_FRAME_HEADER = struct.Struct(">I B I")        # 24-bit length (in the first word, with the type byte), flags, stream
_MAX_WINDOW = 2**31 - 1
_OUR_MAX_FRAME = 16384                          # the protocol default: what we accept
_MAX_STREAMS = 1000
_MAX_HEADER_LIST = 65536
_REPLENISH_AT = 2**30                           # top the connection window up once this much has arrived

# gRPC message handler: (request message, peer address) -> response message.  It must not raise.
Handler = Callable[[bytes, str], Awaitable[bytes]]


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """Literal header field without indexing, new name (RFC 7541 §6.2.2): leaves the peer's table alone."""
    return b"\x00" + _hpack_int(len(name), 7, 0) + name + _hpack_int(len(value), 7, 0) + value


# Our header blocks never use the dynamic table; the first one says so (size update to 0).
_TABLE_OFF = b"\x20"
_RESPONSE_HEADERS = b"\x88" + _literal(b"content-type", b"application/grpc")   # 0x88: :status 200 (static)


def _trailers(status: int, message: str = "") -> bytes:
    block = _literal(b"grpc-status", str(status).encode())
    if message:
        block += _literal(b"grpc-message", message.encode("ascii", "replace"))
    return block


@dataclass(slots=True)
class _Stream:
    path: bytes = b""
    body: bytearray = field(default_factory=bytearray)
    send_window: int = 65535
    refused: int | None = None                  # a gRPC status decided before the handler runs


class H2GrpcProtocol(asyncio.Protocol):
    """One Envoy connection: frames in, unary calls to `handler`, frames out."""

    def __init__(self, handler: Handler, method_path: bytes, max_message_bytes: int,
                 connections: set[H2GrpcProtocol]) -> None:
        self._handler = handler
        self._connections = connections
        self._method_path = method_path
        self._max_message = max_message_bytes
        self._transport: asyncio.Transport | None = None
        self._peer = "unknown"
        self._buffer = bytearray()
        self._preface_seen = False
        self._decoder = hpack.Decoder(max_header_list_size=_MAX_HEADER_LIST)
        self._memo: dict[bytes, list[tuple[bytes, bytes]]] = {}        # see _decode
        self._streams: dict[int, _Stream] = {}
        self._last_stream = 0
        self._continuation: tuple[int, int, bytearray] | None = None     # (stream, flags, fragments)
        self._recv_consumed = 0
        self._send_window = 65535
        self._peer_initial_window = 65535
        self._peer_max_frame = 16384
        self._table_off_sent = False
        self._blocked: list[tuple[int, bytes]] = []                      # (stream, DATA payload) awaiting window
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False        # we sent GOAWAY: nothing more is read
        self._draining = False       # the peer sent GOAWAY: calls in flight finish, no new ones start

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._connections.add(self)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        settings = b"".join(struct.pack(">HI", k, v) for k, v in (
            (MAX_CONCURRENT_STREAMS, _MAX_STREAMS), (INITIAL_WINDOW_SIZE, _MAX_WINDOW),
            (MAX_HEADER_LIST_SIZE, _MAX_HEADER_LIST)))
        # A large receive window up front: a check never waits for a WINDOW_UPDATE from us.
        transport.write(_frame(SETTINGS, 0, 0, settings)
                        + _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", _MAX_WINDOW - 65535)))

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None
        self._streams.clear()
        self._blocked.clear()

    async def shutdown(self, grace: float) -> None:
        """GOAWAY, let the calls in flight answer (for at most `grace` seconds), then close."""
        if self._transport is not None and not self._closing:
            self._closing = True
            self._transport.write(_frame(GOAWAY, 0, 0, struct.pack(">II", self._last_stream, NO_ERROR)))
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        if self._transport is not None:
            self._transport.close()

    def _goaway(self, code: int, why: str) -> None:
        if self._transport is None or self._closing:
            return
        log.warning("closing gRPC connection from %s: %s", self._peer, why)
        self._closing = True
        self._transport.write(_frame(GOAWAY, 0, 0, struct.pack(">II", self._last_stream, code)))
        self._transport.close()

    # -- reading ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer += data
        if not self._preface_seen:
            if len(self._buffer) < len(PREFACE):
                if not PREFACE.startswith(bytes(self._buffer)):
                    self._goaway(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            if not self._buffer.startswith(PREFACE):
                self._goaway(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            self._preface_seen = True
            del self._buffer[:len(PREFACE)]
        view = memoryview(self._buffer)
        offset = 0
        try:
            while len(view) - offset >= 9 and not self._closing:
                word, flags, stream = _FRAME_HEADER.unpack_from(view, offset)
                length, kind = word >> 8, word & 0xFF
                if length > _OUR_MAX_FRAME:
                    self._goaway(FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE")
                    break
                if len(view) - offset - 9 < length:
                    break
                self._on_frame(kind, flags, stream & _MAX_WINDOW, bytes(view[offset + 9: offset + 9 + length]))
                offset += 9 + length
        finally:
            view.release()
        del self._buffer[:offset]

    def _on_frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if self._continuation is not None and kind != CONTINUATION:
            self._goaway(PROTOCOL_ERROR, "header block interrupted")
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
                self._goaway(PROTOCOL_ERROR, "bad PING")
            elif not flags & ACK and self._transport is not None:
                self._transport.write(_frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream, payload)
        elif kind == RST_STREAM:
            # Envoy gave up on the call (its timeout): the answer, when ready, goes nowhere.
            self._streams.pop(stream, None)
        elif kind == GOAWAY:
            self._draining = True
        elif kind == PUSH_PROMISE:
            self._goaway(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # PRIORITY and unknown frame types are ignored (RFC 9113 §4.1, §5.3.2).

    def _on_settings(self, flags: int, stream: int, payload: bytes) -> None:
        if stream != 0 or len(payload) % 6 or (flags & ACK and payload):
            self._goaway(FRAME_SIZE_ERROR if len(payload) % 6 else PROTOCOL_ERROR, "bad SETTINGS")
            return
        if flags & ACK:
            return
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == INITIAL_WINDOW_SIZE:
                if value > _MAX_WINDOW:
                    self._goaway(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large")
                    return
                for state in self._streams.values():
                    state.send_window += value - self._peer_initial_window
                self._peer_initial_window = value
            elif key == MAX_FRAME_SIZE:
                if not 16384 <= value <= 16777215:
                    self._goaway(PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                    return
                self._peer_max_frame = value
        if self._transport is not None:
            self._transport.write(_frame(SETTINGS, ACK, 0))
        self._flush_blocked()

    def _on_window_update(self, stream: int, payload: bytes) -> None:
        if len(payload) != 4:
            self._goaway(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
            return
        increment = struct.unpack(">I", payload)[0] & _MAX_WINDOW
        if stream == 0:
            self._send_window += increment
            if increment == 0 or self._send_window > _MAX_WINDOW:
                self._goaway(FLOW_CONTROL_ERROR, "bad connection WINDOW_UPDATE")
                return
        elif (state := self._streams.get(stream)) is not None:
            state.send_window += increment
        self._flush_blocked()

    def _strip(self, flags: int, payload: bytes, priority: bool) -> bytes | None:
        """The fragment without padding (and priority fields); None if the padding is impossible."""
        start, end = 0, len(payload)
        if flags & PADDED:
            if not payload:
                return None
            start, end = 1, len(payload) - payload[0]
        if priority and flags & PRIORITY_FLAG:
            start += 5
        return payload[start:end] if start <= end else None

    def _on_headers(self, flags: int, stream: int, payload: bytes) -> None:
        fragment = self._strip(flags, payload, priority=True)
        if fragment is None or stream == 0 or stream % 2 == 0:
            self._goaway(PROTOCOL_ERROR, "bad HEADERS")
            return
        if flags & END_HEADERS:
            self._on_header_block(stream, flags, fragment)
        else:
            self._continuation = (stream, flags, bytearray(fragment))

    def _on_continuation(self, flags: int, stream: int, payload: bytes) -> None:
        if self._continuation is None or self._continuation[0] != stream:
            self._goaway(PROTOCOL_ERROR, "unexpected CONTINUATION")
            return
        first_flags, block = self._continuation[1], self._continuation[2]
        block += payload
        if len(block) > _MAX_HEADER_LIST:
            self._goaway(PROTOCOL_ERROR, "header block too large")
            return
        if flags & END_HEADERS:
            self._continuation = None
            self._on_header_block(stream, first_flags, bytes(block))

    def _table_state(self) -> tuple[int, int, int]:
        """Changes whenever a header block changes the HPACK dynamic table (an insertion or a resize)."""
        table = self._decoder.header_table
        entries = table.dynamic_entries
        return len(entries), id(entries[0]) if entries else 0, table.maxsize

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]] | None:
        # Envoy sends the same header block for every check once its dynamic table is warm (indexed
        # fields and a never-indexed :path).  A block that leaves the table as it was means the same
        # headers until some block changes the table, which clears the memo: HPACK decoding in pure
        # Python would otherwise be a tenth of a check.
        known = self._memo.get(block)
        if known is not None:
            return known
        before = self._table_state()
        try:
            headers = [(bytes(n), bytes(v)) for n, v in self._decoder.decode(block, raw=True)]
        except HPACKError as exc:
            self._goaway(COMPRESSION_ERROR, f"HPACK: {type(exc).__name__}")
            return None
        if self._table_state() != before:
            self._memo.clear()
        elif len(block) <= 1024:
            if len(self._memo) >= 64:
                self._memo.clear()
            self._memo[block] = headers
        return headers

    def _on_header_block(self, stream: int, flags: int, block: bytes) -> None:
        headers = self._decode(block)   # always, so the HPACK state stays in step with the peer
        if headers is None:
            return
        if stream in self._streams or stream <= self._last_stream:
            # Unary calls have no request trailers, and a closed stream cannot be reopened.
            self._goaway(PROTOCOL_ERROR if stream in self._streams else STREAM_CLOSED, "HEADERS on a used stream")
            return
        self._last_stream = stream
        if self._draining:
            return
        if len(self._streams) >= _MAX_STREAMS:
            if self._transport is not None:
                self._transport.write(_frame(RST_STREAM, 0, stream, struct.pack(">I", REFUSED_STREAM)))
            return
        state = _Stream(send_window=self._peer_initial_window)
        fields = dict(headers)
        state.path = fields.get(b":path", b"")
        if fields.get(b":method") != b"POST" or not fields.get(b"content-type", b"").startswith(b"application/grpc"):
            state.refused = GRPC_UNIMPLEMENTED
        elif state.path != self._method_path:
            state.refused = GRPC_UNIMPLEMENTED
        self._streams[stream] = state
        if flags & END_STREAM:
            self._finish(stream, state)

    def _on_data(self, flags: int, stream: int, payload: bytes) -> None:
        self._recv_consumed += len(payload)
        if self._recv_consumed >= _REPLENISH_AT and self._transport is not None:
            self._transport.write(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._recv_consumed)))
            self._recv_consumed = 0
        state = self._streams.get(stream)
        if state is None:
            if stream == 0 or stream > self._last_stream:
                self._goaway(PROTOCOL_ERROR, "DATA on an idle stream")
            return      # a stream we reset or answered already: the bytes are discarded
        data = self._strip(flags, payload, priority=False)
        if data is None:
            self._goaway(PROTOCOL_ERROR, "bad padding")
            return
        if state.refused is None:
            state.body += data
            if len(state.body) > 5 + self._max_message:
                state.refused = GRPC_RESOURCE_EXHAUSTED
                state.body.clear()
        if flags & END_STREAM:
            self._finish(stream, state)

    # -- answering ----------------------------------------------------------------------------

    def _finish(self, stream: int, state: _Stream) -> None:
        """The request is complete: answer a refusal now, or run the handler."""
        if state.refused is None:
            body = state.body
            if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
                # Compressed (flag 1) or a length that disagrees with the bytes sent.
                state.refused = GRPC_UNIMPLEMENTED if len(body) >= 5 and body[0] == 1 else GRPC_INTERNAL
        if state.refused is not None:
            message = "message larger than the limit" if state.refused == GRPC_RESOURCE_EXHAUSTED else ""
            self._respond(stream, None, state.refused, message)
            return
        task = asyncio.get_running_loop().create_task(self._call(stream, bytes(state.body[5:])))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, stream: int, message: bytes) -> None:
        try:
            answer = await self._handler(message, self._peer)
        except Exception:   # noqa: BLE001 - the handler should not raise; if it does, the call fails, never allows
            log.exception("gRPC handler failed")
            self._respond(stream, None, GRPC_INTERNAL, "internal error")
            return
        self._respond(stream, answer, GRPC_OK)

    def _header_block(self, block: bytes) -> bytes:
        if self._table_off_sent:
            return block
        self._table_off_sent = True
        return _TABLE_OFF + block

    def _respond(self, stream: int, message: bytes | None, status: int, status_message: str = "") -> None:
        state = self._streams.get(stream)
        if state is None or self._transport is None:
            return      # reset by the peer, or the connection is gone
        if message is None:
            # Trailers-Only (gRPC over HTTP/2): status and gRPC status in one HEADERS frame.
            block = self._header_block(_RESPONSE_HEADERS + _trailers(status, status_message))
            self._streams.pop(stream, None)
            self._transport.write(_frame(HEADERS, END_HEADERS | END_STREAM, stream, block))
            return
        head = _frame(HEADERS, END_HEADERS, stream, self._header_block(_RESPONSE_HEADERS))
        self._send_data(stream, b"\x00" + len(message).to_bytes(4, "big") + message, head)

    def _send_data(self, stream: int, payload: bytes, head: bytes = b"") -> None:
        """DATA and trailers, after `head` (the response HEADERS) in the same write when the window allows."""
        state = self._streams.get(stream)
        if state is None or self._transport is None:
            return
        size = len(payload)
        if size > self._send_window or size > state.send_window:
            if head:
                self._transport.write(head)
            self._blocked.append((stream, payload))
            return
        self._send_window -= size
        state.send_window -= size
        frames = [head] + [_frame(DATA, 0, stream, payload[i:i + self._peer_max_frame])
                           for i in range(0, size, self._peer_max_frame)]
        frames.append(_frame(HEADERS, END_HEADERS | END_STREAM, stream, self._header_block(_trailers(GRPC_OK))))
        self._streams.pop(stream, None)
        self._transport.write(b"".join(frames))

    def _flush_blocked(self) -> None:
        blocked, self._blocked = self._blocked, []
        for stream, payload in blocked:
            self._send_data(stream, payload)


class H2GrpcServer:
    """A listening socket and its connections; stop() ends both (asyncio's Server leaves connections open)."""

    def __init__(self, handler: Handler, method_path: str, *, max_message_bytes: int) -> None:
        self._handler = handler
        self._method_path = method_path.encode()
        self._max_message = max_message_bytes
        self._connections: set[H2GrpcProtocol] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: H2GrpcProtocol(self._handler, self._method_path, self._max_message, self._connections),
            host, port, reuse_port=reuse_port or None, backlog=1024)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, grace: float) -> None:
        if self._server is None:
            return
        self._server.close()
        await asyncio.gather(*(c.shutdown(grace) for c in list(self._connections)))
        await self._server.wait_closed()
        self._server = None
