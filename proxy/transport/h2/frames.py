"""HTTP/2 frame and header-block encoding for proxy.transport.h2.server (RFC 9113 framing, RFC 7541 HPACK): the
constants, the byte layouts we write, and the memoized decoder for the header blocks we read."""

from __future__ import annotations

import struct

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
# Error codes (RFC 9113 §7).
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED, FRAME_SIZE_ERROR = 0x0, 0x1, 0x3, 0x5, 0x6
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x7, 0x8, 0x9, 0xB
# Settings identifiers.
HEADER_TABLE_SIZE, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x1, 0x3, 0x4, 0x5, 0x6
# gRPC status codes.
GRPC_OK, GRPC_INTERNAL, GRPC_UNIMPLEMENTED, GRPC_RESOURCE_EXHAUSTED = 0, 13, 12, 8

FRAME_HEADER = struct.Struct(">I B I")        # 24-bit length (in the first word, with the type byte), flags, stream
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535                         # every window before SETTINGS / WINDOW_UPDATE say otherwise
OUR_MAX_FRAME = 16384                          # the protocol default: what we accept


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def rst_stream(stream: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream, struct.pack(">I", code))


def goaway(last_stream: int, code: int) -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_stream, code))


def window_update(stream: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream, struct.pack(">I", increment))


def settings(*pairs: tuple[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def strip(flags: int, payload: bytes, priority: bool) -> bytes | None:
    """A frame's fragment without padding (and priority fields); None if the padding is impossible."""
    start, end = 0, len(payload)
    if flags & PADDED:
        if not payload:
            return None
        start, end = 1, len(payload) - payload[0]
    if priority and flags & PRIORITY_FLAG:
        start += 5
    return payload[start:end] if start <= end else None


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
TABLE_OFF = b"\x20"
RESPONSE_HEADERS = b"\x88" + _literal(b"content-type", b"application/grpc")   # 0x88: :status 200 (static)


def trailers(status: int, message: str = "") -> bytes:
    block = _literal(b"grpc-status", str(status).encode())
    if message:
        block += _literal(b"grpc-message", message.encode("ascii", "replace"))
    return block


class HeaderDecoder:
    """HPACK decoding that remembers header blocks which leave the dynamic table unchanged."""

    def __init__(self, max_header_list: int) -> None:
        self._decoder = hpack.Decoder(max_header_list_size=max_header_list)
        self._memo: dict[bytes, list[tuple[bytes, bytes]]] = {}

    def _table_state(self) -> tuple[int, int, int]:
        """Changes whenever a header block changes the HPACK dynamic table (an insertion or a resize)."""
        table = self._decoder.header_table
        entries = table.dynamic_entries
        return len(entries), id(entries[0]) if entries else 0, table.maxsize

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The header list; HPACKError when the block is not valid HPACK (a connection error)."""
        # Envoy sends the same header block for every check once its dynamic table is warm (indexed
        # fields and a never-indexed :path).  A block that leaves the table as it was means the same
        # headers until some block changes the table, which clears the memo: HPACK decoding in pure
        # Python would otherwise be a tenth of a check.
        known = self._memo.get(block)
        if known is not None:
            return known
        before = self._table_state()
        headers = [(bytes(n), bytes(v)) for n, v in self._decoder.decode(block, raw=True)]
        if self._table_state() != before:
            self._memo.clear()
        elif len(block) <= 1024:
            if len(self._memo) >= 64:
                self._memo.clear()
            self._memo[block] = headers
        return headers

