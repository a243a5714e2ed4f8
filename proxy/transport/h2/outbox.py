"""The streams of one proxy.transport.h2.server connection and their answers, sent within the peer's flow-control windows
(RFC 9113 §6.9): output that does not fit waits on its stream, never in a connection-wide list."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from proxy.transport.h2.frames import (
    DATA, DEFAULT_WINDOW, END_HEADERS, END_STREAM, GRPC_OK, HEADERS, MAX_WINDOW, NO_ERROR, RESPONSE_HEADERS,
    TABLE_OFF, frame, rst_stream, trailers,
)

# Stream states from the server's side (RFC 9113 §5.1).  CLOSED streams stay in the table only while
# their cancelled handler task finishes, so that the task still holds its slot.
OPEN, HALF_CLOSED, CLOSED = 0, 1, 2


@dataclass(slots=True)
class Stream:
    opened: float
    recv_window: int
    send_window: int
    state: int = OPEN
    body: bytearray = field(default_factory=bytearray)
    held: int = 0                               # connection-window bytes this stream's request still holds
    refused: int | None = None                  # a gRPC status decided before the handler runs
    task: asyncio.Task[None] | None = None
    pending: memoryview | None = None           # answer DATA waiting for flow-control window
    metadata: tuple[tuple[bytes, bytes], ...] = ()   # the request headers the handler asked for


class Outbox:
    """Answers on one connection.  A stream whose answer waits joins `ready` only when the connection window
    alone holds it back, so a window update costs work in proportion to what it lets through."""

    def __init__(self, streams: dict[int, Stream]) -> None:
        self.transport: asyncio.Transport | None = None
        self.ready: dict[int, None] = {}
        self.window = DEFAULT_WINDOW                # the connection's send window
        self.initial_window = DEFAULT_WINDOW        # the peer's SETTINGS_INITIAL_WINDOW_SIZE
        self.max_frame = 16384
        self._streams = streams
        self._table_off_sent = False

    def respond(self, stream: int, message: bytes | None, status: int, status_message: str = "") -> None:
        """The answer (`message`), or a status alone (None)."""
        state = self._streams.get(stream)
        if state is None or state.state == CLOSED or self.transport is None:
            return      # reset by the peer, or the connection is gone
        if message is None:
            # Trailers-Only (gRPC over HTTP/2): status and gRPC status in one HEADERS frame.  Answered
            # before the request ended: RST_STREAM NO_ERROR asks the peer to stop sending it.
            block = self._header_block(RESPONSE_HEADERS + trailers(status, status_message))
            early = state.state == OPEN
            self.end(stream, state)
            self.transport.write(frame(HEADERS, END_HEADERS | END_STREAM, stream, block)
                                 + (rst_stream(stream, NO_ERROR) if early else b""))
            return
        head = frame(HEADERS, END_HEADERS, stream, self._header_block(RESPONSE_HEADERS))
        state.pending = memoryview(b"\x00" + len(message).to_bytes(4, "big") + message)
        self.send(stream, state, head)

    def send(self, stream: int, state: Stream, head: bytes = b"") -> None:
        """As much of the answer as the windows allow (after `head`, in the same write); the trailers once
        all of it is sent."""
        assert state.pending is not None and self.transport is not None
        pending = state.pending
        size = min(len(pending), self.window, state.send_window)
        frames = [head]
        if size > 0:
            step = self.max_frame
            frames += [frame(DATA, 0, stream, bytes(pending[i:min(i + step, size)])) for i in range(0, size, step)]
            self.window -= size
            state.send_window -= size
            state.pending = pending = pending[size:]
        if not pending:
            frames.append(frame(HEADERS, END_HEADERS | END_STREAM, stream, self._header_block(trailers(GRPC_OK))))
            self.end(stream, state)
        elif state.send_window > 0:
            self.ready[stream] = None
        if len(frames) > 1 or head:
            self.transport.write(b"".join(frames))

    def flush(self) -> None:
        # Each turn sends at least a byte or ends a stream: the work is bounded by the window granted.
        while self.ready and self.window > 0 and self.transport is not None:
            stream = next(iter(self.ready))
            del self.ready[stream]
            state = self._streams.get(stream)
            if state is not None and state.pending is not None and state.send_window > 0:
                self.send(stream, state)

    def grow_connection(self, increment: int) -> bool:
        """A connection WINDOW_UPDATE; False if it overflows the window."""
        self.window += increment
        if self.window > MAX_WINDOW:
            return False
        self.flush()
        return True

    def grow_stream(self, stream: int, state: Stream, increment: int) -> bool:
        """A stream WINDOW_UPDATE; False if it overflows the window."""
        was_blocked = state.send_window <= 0
        state.send_window += increment
        if state.send_window > MAX_WINDOW:
            return False
        if was_blocked and state.pending is not None and state.send_window > 0:
            self.ready[stream] = None
            self.flush()
        return True

    def set_initial_window(self, value: int) -> bool:
        """SETTINGS_INITIAL_WINDOW_SIZE: every stream's window moves by the change (O(streams), which the
        SETTINGS budget pays for); False if one overflows."""
        delta, self.initial_window = value - self.initial_window, value
        for stream, state in self._streams.items() if delta else ():
            state.send_window += delta
            if state.send_window > MAX_WINDOW:
                return False
            if delta > 0 and state.pending is not None and state.send_window > 0:
                self.ready[stream] = None
        return True

    def end(self, stream: int, state: Stream) -> None:
        """We sent END_STREAM: the stream is closed and forgotten."""
        self._streams.pop(stream, None)
        self.ready.pop(stream, None)
        state.state, state.pending = CLOSED, None

    def _header_block(self, block: bytes) -> bytes:
        if self._table_off_sent:
            return block
        self._table_off_sent = True
        return TABLE_OFF + block
