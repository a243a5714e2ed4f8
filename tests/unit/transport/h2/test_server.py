"""proxy.transport.h2.server against hand-made HTTP/2 frames: the happy unary call, and every way a peer can get the
protocol wrong (each ends in a clean gRPC error or GOAWAY, never a handler call it should not get)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import hpack
import pytest

from proxy.transport.h2.server import H2GrpcServer
from proxy.transport.h2.frames import (
    CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, NO_ERROR, PADDED, PING, PREFACE, RST_STREAM,
    SETTINGS, WINDOW_UPDATE,
)
from proxy.transport.h2.frames import frame as _frame

METHOD = "/envoy.service.auth.v3.Authorization/Check"


@dataclass
class Recorder:
    calls: list[tuple[bytes, str]] = field(default_factory=list)
    metadata: list[tuple[tuple[bytes, bytes], ...]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    called: asyncio.Event = field(default_factory=asyncio.Event)   # set by the first call
    hold: bool = False

    async def __call__(self, message: bytes, peer: str, metadata: tuple[tuple[bytes, bytes], ...]) -> bytes:
        self.calls.append((message, peer))
        self.metadata.append(metadata)
        self.called.set()
        if self.hold:
            await self.release.wait()
        return b"echo:" + message


@dataclass
class Frame:
    kind: int
    flags: int
    stream: int
    payload: bytes


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()

    def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))

    def headers_block(self, path: str = METHOD, method: str = "POST", content_type: str = "application/grpc") -> bytes:
        return self.encoder.encode([(":method", method), (":scheme", "http"), (":path", path),
                                    (":authority", "idgate"), ("content-type", content_type), ("te", "trailers")])

    async def frame(self) -> Frame:
        head = await asyncio.wait_for(self.reader.readexactly(9), 5)
        length = int.from_bytes(head[:3], "big")
        payload = await asyncio.wait_for(self.reader.readexactly(length), 5)
        return Frame(head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload)

    async def frames_until(self, stop) -> list[Frame]:
        seen = []
        while True:
            frame = await self.frame()
            seen.append(frame)
            if stop(frame):
                return seen

    async def response(self, stream: int) -> tuple[dict[str, str], bytes]:
        """Headers (incl. trailers) and the message of one call, skipping SETTINGS and the like."""
        headers: dict[str, str] = {}
        body = b""
        while True:
            frame = await self.frame()
            if frame.stream != stream:
                continue
            if frame.kind == HEADERS:
                headers.update({str(k): str(v) for k, v in self.decoder.decode(frame.payload)})
            elif frame.kind == DATA:
                body += frame.payload
            if frame.flags & END_STREAM:
                return headers, body[5:]


def grpc_message(message: bytes, compressed: int = 0) -> bytes:
    return bytes((compressed,)) + len(message).to_bytes(4, "big") + message


@pytest.fixture
async def server() -> AsyncIterator[tuple[H2GrpcServer, Recorder, int]]:
    recorder = Recorder()
    h2 = H2GrpcServer(recorder, METHOD, max_message_bytes=1024)
    port = await h2.start("127.0.0.1", 0)
    try:
        yield h2, recorder, port
    finally:
        recorder.release.set()
        await h2.stop(1.0)


@pytest.fixture
async def client(server) -> AsyncIterator[Client]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server[2])
    c = Client(reader, writer)
    c.send(PREFACE, _frame(SETTINGS, 0, 0))
    try:
        yield c
    finally:
        writer.close()


async def test_server_opens_with_settings_and_bounded_windows(client):
    frames = await client.frames_until(lambda f: f.kind == WINDOW_UPDATE)
    assert frames[0].kind == SETTINGS and frames[0].flags == 0
    advertised = dict(struct.iter_unpack(">HI", frames[0].payload))
    assert advertised[0x4] == 1024 + 5                                  # a stream: one message and its prefix
    assert struct.unpack(">I", frames[-1].payload)[0] == (1 << 20) - 65535   # the connection: 1 MiB


async def test_unary_call(client, server):
    client.send(_frame(HEADERS, END_HEADERS, 1, client.headers_block()),
                _frame(DATA, END_STREAM, 1, grpc_message(b"hello")))
    headers, body = await client.response(1)
    assert headers[":status"] == "200" and headers["content-type"] == "application/grpc"
    assert headers["grpc-status"] == "0" and body == b"echo:hello"
    assert server[1].calls == [(b"hello", "127.0.0.1")]


async def test_the_handler_gets_the_metadata_it_asked_for_in_order_and_nothing_else() -> None:
    recorder = Recorder()
    h2 = H2GrpcServer(recorder, METHOD, max_message_bytes=1024, metadata=frozenset({b"traceparent", b"tracestate"}))
    port = await h2.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        c = Client(reader, writer)
        block = c.encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", METHOD), (":authority", "idgate"),
                                  ("content-type", "application/grpc"), ("tracestate", "a=1"), ("x-other", "no"),
                                  ("traceparent", "one"), ("traceparent", "two")])
        c.send(PREFACE, _frame(SETTINGS, 0, 0), _frame(HEADERS, END_HEADERS, 1, block),
               _frame(DATA, END_STREAM, 1, grpc_message(b"m")))
        await c.response(1)
        assert recorder.metadata == [((b"tracestate", b"a=1"), (b"traceparent", b"one"), (b"traceparent", b"two"))]
    finally:
        writer.close()
        await h2.stop(1.0)


async def test_without_names_the_handler_gets_no_metadata(client, server):
    client.send(_frame(HEADERS, END_HEADERS, 1, client.headers_block()), _frame(DATA, END_STREAM, 1, grpc_message(b"m")))
    await client.response(1)
    assert server[1].metadata == [()]


async def test_many_calls_on_one_connection_keep_hpack_in_step(client, server):
    for stream in (1, 3, 5, 7):
        client.send(_frame(HEADERS, END_HEADERS, stream, client.headers_block()),
                    _frame(DATA, END_STREAM, stream, grpc_message(b"m%d" % stream)))
        headers, body = await client.response(stream)
        assert headers["grpc-status"] == "0" and body == b"echo:m%d" % stream
    assert len(server[1].calls) == 4


async def test_headers_split_over_continuation_and_padded_data(client, server):
    block = client.headers_block()
    padded = bytes((3,)) + grpc_message(b"x") + b"\0\0\0"
    client.send(_frame(HEADERS, 0, 1, block[:5]), _frame(CONTINUATION, END_HEADERS, 1, block[5:]),
                _frame(DATA, END_STREAM | PADDED, 1, padded))
    headers, body = await client.response(1)
    assert headers["grpc-status"] == "0" and body == b"echo:x"


@pytest.mark.parametrize("kwargs", [{"path": "/other.Service/Method"}, {"method": "GET"}, {"content_type": "text/plain"}])
async def test_anything_but_the_one_method_is_unimplemented(client, server, kwargs):
    client.send(_frame(HEADERS, END_HEADERS, 1, client.headers_block(**kwargs)),
                _frame(DATA, END_STREAM, 1, grpc_message(b"x")))
    headers, _ = await client.response(1)
    assert headers["grpc-status"] == "12"
    assert server[1].calls == []


async def test_oversized_message_is_resource_exhausted_unread_and_never_handled(client, server):
    # The length prefix says 2000 bytes: answered at once, and RST_STREAM NO_ERROR stops the upload.
    client.send(_frame(HEADERS, END_HEADERS, 1, client.headers_block()), _frame(DATA, 0, 1, grpc_message(b"a" * 2000)[:100]))
    headers, _ = await client.response(1)
    assert headers["grpc-status"] == "8"
    [reset] = await client.frames_until(lambda f: f.kind == RST_STREAM)
    assert reset.stream == 1 and reset.payload == struct.pack(">I", NO_ERROR)
    assert server[1].calls == []


async def test_more_bytes_than_the_prefix_announced_is_internal(client, server):
    client.send(_frame(HEADERS, END_HEADERS, 1, client.headers_block()),
                _frame(DATA, 0, 1, grpc_message(b"a" * 1000)), _frame(DATA, END_STREAM, 1, b"a" * 20))
    headers, _ = await client.response(1)
    assert headers["grpc-status"] == "13"
    assert server[1].calls == []


@pytest.mark.parametrize("body,status", [(grpc_message(b"x", compressed=1), "12"), (b"\0\0\0\0\x09abc", "13"), (b"\0\0", "13")])
async def test_compressed_or_inconsistent_framing_is_refused(client, server, body, status):
    client.send(_frame(HEADERS, END_HEADERS, 1, client.headers_block()), _frame(DATA, END_STREAM, 1, body))
    headers, _ = await client.response(1)
    assert headers["grpc-status"] == status
    assert server[1].calls == []


async def test_ping_is_answered(client):
    client.send(_frame(PING, 0, 0, b"12345678"))
    frames = await client.frames_until(lambda f: f.kind == PING)
    assert frames[-1].flags == 1 and frames[-1].payload == b"12345678"


async def test_reset_call_gets_no_answer_and_the_connection_goes_on(client, server):
    server[1].hold = True
    client.send(_frame(HEADERS, END_HEADERS, 1, client.headers_block()), _frame(DATA, END_STREAM, 1, grpc_message(b"a")))
    await asyncio.wait_for(server[1].called.wait(), 5)   # the handler has started
    client.send(_frame(RST_STREAM, 0, 1, struct.pack(">I", 8)))
    server[1].hold = False
    server[1].release.set()
    client.send(_frame(HEADERS, END_HEADERS, 3, client.headers_block()), _frame(DATA, END_STREAM, 3, grpc_message(b"b")))
    headers, body = await client.response(3)
    assert body == b"echo:b"


async def test_answer_waits_for_flow_control_window(client, server):
    # The peer's stream window is 10 bytes: the answer's DATA must wait for a WINDOW_UPDATE.
    client.send(_frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 10)),
                _frame(HEADERS, END_HEADERS, 1, client.headers_block()), _frame(DATA, END_STREAM, 1, grpc_message(b"abcdef")))
    frames = await client.frames_until(lambda f: f.kind == HEADERS and f.stream == 1)
    assert not any(f.kind == DATA for f in frames)
    client.send(_frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 1000)))
    headers, body = await client.response(1)
    assert body == b"echo:abcdef" and headers["grpc-status"] == "0"


@pytest.mark.parametrize("frames", [
    [_frame(HEADERS, END_HEADERS, 2, b"\x82")],                     # even (server-initiated) stream id
    [_frame(DATA, END_STREAM, 9, b"x")],                            # DATA on an idle stream
    [_frame(HEADERS, 0, 1, b"\x82"), _frame(PING, 0, 0, b"12345678")],   # header block interrupted
    [_frame(PING, 0, 0, b"123")],                                   # PING of the wrong size
    [_frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff")],         # HPACK garbage
    [b"\x00\x50\x00" + bytes((0, 0)) + b"\0\0\0\x01"],              # a 20 KiB frame header
])
async def test_protocol_errors_end_in_goaway(client, server, frames):
    client.send(*frames)
    seen = await client.frames_until(lambda f: f.kind == GOAWAY)
    assert struct.unpack(">I", seen[-1].payload[4:8])[0] != 0
    assert await client.reader.read() == b""           # and the connection is closed
    assert server[1].calls == []


async def test_not_http2_at_all_is_closed(server):
    reader, writer = await asyncio.open_connection("127.0.0.1", server[2])
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    assert GOAWAY in data[:9] or data[3:4] == bytes((SETTINGS,))   # SETTINGS first, then GOAWAY and close
    writer.close()


async def test_stop_sends_goaway_and_closes_connections(server, client):
    h2, recorder, _ = server
    await h2.stop(1.0)
    seen = await client.frames_until(lambda f: f.kind == GOAWAY)
    assert struct.unpack(">I", seen[-1].payload[4:8])[0] == NO_ERROR
    assert await client.reader.read() == b""


async def test_a_remembered_header_block_is_forgotten_when_the_hpack_table_changes(client, server):
    """The same bytes can mean another :path once the dynamic table changes: the server must notice."""
    content_type = b"\x0f\x10\x10application/grpc"          # literal, name = static 31, not indexed

    def literal_path(path: bytes) -> bytes:                  # literal with incremental indexing, name = :path
        return b"\x44" + bytes((len(path),)) + path

    indexed_path = b"\x83\x86\xbe" + content_type            # :path = dynamic entry 62, whatever it is now
    blocks = [b"\x83\x86" + literal_path(METHOD.encode()) + content_type, indexed_path,
              b"\x83\x86" + literal_path(b"/other.Service/Method") + content_type, indexed_path]
    statuses = []
    for number, block in enumerate(blocks):
        stream = 2 * number + 1
        client.send(_frame(HEADERS, END_HEADERS, stream, block), _frame(DATA, END_STREAM, stream, grpc_message(b"m")))
        headers, _ = await client.response(stream)
        statuses.append(headers["grpc-status"])
    assert statuses == ["0", "0", "12", "12"]
    assert len(server[1].calls) == 2
