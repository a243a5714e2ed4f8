"""One upstream HTTP/1.1 connection: an asyncio.Protocol that carries one exchange at a time, writes the
request, and parses the answer with llhttp (httptools' HttpResponseParser), with bounded buffers both ways.

The answer's head is found by this module, not only by llhttp: a head ends at the first CRLF CRLF
(llhttp, strict as configured, accepts no bare LF, no obs-fold and no CR inside a field), so the parser
is fed exactly the head first.  That bounds the head while it is read (llhttp itself has no limit), and
it lets a HEAD answer end at its head without llhttp reading the next bytes as the body its
Content-Length announces.  Everything after the head goes to llhttp as body framing: Content-Length,
chunked, or until the connection closes (then the connection is not reused).

Reading from the upstream pauses while more than `Limits.high_water` bytes of body wait for the caller
(a slow client does not make idgate buffer a large answer), and writing the request body waits for the
transport to drain (a slow upstream does not make idgate buffer a large upload).
"""

from __future__ import annotations

import asyncio
import functools
import re
import sys
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from typing import Any, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from proxy.transport.http1.errors import (
    BadResponse, BodyMismatch, ConnectionClosed, HeadTooLarge, InvalidRequest, ReadTimeout, WriteTimeout,
)

_END_OF_HEAD = b"\r\n\r\n"
_MAX_INTERIM = 8                       # 1xx answers skipped before the final one, at most

# Phases of a connection: between exchanges; writing a request and reading the answer's head; reading
# the answer's body; answered (the caller may still be taking the last bytes).
IDLE, HEAD, BODY, DONE = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Limits:
    max_head_bytes: int = 65536        # the answer's head(s): status lines and header fields, interim answers included
    max_headers: int = 128             # header fields of one answer
    high_water: int = 256 * 1024       # body bytes buffered for the caller before reading pauses


class _Stop(Exception):
    """Raised from a parser callback to stop llhttp; what happened is already recorded."""


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(WriteTimeout("the upstream stopped reading the request body"))


# Control characters but HTAB (RFC 9110 §5.5): CR and LF count here too, so a head holds exactly the
# ones of its own line ends.
_CONTROL = bytes(range(0x09)) + bytes(range(0x0A, 0x20)) + b"\x7f"
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")      # RFC 9110 §5.6.2
_TARGET = re.compile(r"/[\x21-\x7e]*")
# What a buffered body piece costs beyond its bytes (the bytes object and its list slot): counted toward
# high_water, so an upstream sending tiny chunks cannot make a paused connection hold many times that.
_PIECE_OVERHEAD = sys.getsizeof(b"") + 8


@functools.lru_cache(maxsize=1024)     # the same few names on every request
def _is_token(value: str) -> bool:
    return _TOKEN.fullmatch(value) is not None


def request_head(method: str, target: str, headers: list[tuple[str, str]], has_body: bool) -> tuple[bytes, int | None]:
    """The request head as written, and the Content-Length the caller gave (None: chunked or no body).
    The headers go out as given, in order; the only one added is `Transfer-Encoding: chunked` for a body
    without a Content-Length."""
    if not _is_token(method) or not _TARGET.fullmatch(target):
        raise InvalidRequest("the method must be a token and the target an origin-form path of visible ASCII")
    parts = [method, " ", target, " HTTP/1.1\r\n"]
    length: int | None = None
    for name, value in headers:
        if not _is_token(name):
            # "Content-Length " or "Transfer-Encoding\t" would frame the body twice for a lenient upstream.
            raise InvalidRequest("a header name that is not a token")
        parts.append(f"{name}: {value}\r\n")
        size = len(name)
        if size == 14 and name.lower() == "content-length":
            if length is not None or not (value.isascii() and value.isdigit()):
                raise InvalidRequest("a request needs one Content-Length of digits")
            length = int(value)
        elif size == 17 and name.lower() == "transfer-encoding":
            raise InvalidRequest("the client frames request bodies itself: no Transfer-Encoding from the caller")
    if has_body and length is None:
        parts.append("Transfer-Encoding: chunked\r\n")
    elif not has_body and length:
        raise BodyMismatch("a Content-Length without a body")
    parts.append("\r\n")
    head = "".join(parts).encode("utf-8", "surrogateescape")
    # The only control characters are the CR LF of the line ends written above: no field can end early
    # or smuggle a header of its own.
    line_ends = len(parts) - 3
    if len(head) - len(head.translate(None, _CONTROL)) != 2 * line_ends or " " in method or " " in target:
        raise InvalidRequest("a control character or space where the request head cannot hold one")
    return head, length


class Connection(asyncio.Protocol):
    """A connection and the state of its current exchange.  The pool owns it between exchanges; an
    exchange calls begin(), writes the head, then head() and read() until read() returns b""."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: Limits, on_lost: Callable[[Connection], None]) -> None:
        self._loop = loop
        self._limits = limits
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self._tls = False                  # over TLS: the end of the connection is no proof of a body's end
        self.closed = False
        self.pooled = False                # in its origin's idle list
        self.idle_since = 0.0
        self.origin: Any = None            # the pool's Origin this connection belongs to
        self._parser: HttpResponseParser | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timeout = 0.0
        self._activity = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._reset(False)
        self._phase = IDLE

    def _reset(self, head_only: bool) -> None:
        self._phase = HEAD
        self._head_only = head_only        # the answer to HEAD: it ends at its head
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._tail = b""                   # the last bytes of a head fed so far, to find CRLF CRLF across reads
        self._interim = False              # parsing a 1xx
        self._interims = 0
        self._final = False                # the final answer's head is parsed
        self._chunked = False
        self._has_length = False
        self._close = False                # Connection: close
        self._keep_alive_token = False     # Connection: keep-alive (HTTP/1.0)
        self._until_close = False          # body delimited by the end of the connection
        self._keep_alive = False
        self._complete = False
        self._spoiled = False              # never reuse: bytes after the answer, an aborted body, ...
        self._error: BaseException | None = None
        self._callback_error: BaseException | None = None
        self.answered = False              # any byte of an answer arrived
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._gap = 0                      # bytes since the last body bytes (chunk framing, trailers)
        self._sent = False                 # the whole request is written

    # --- the exchange, as the pool's Exchange drives it ---

    def begin(self, head_only: bool, read_timeout: float) -> None:
        self._reset(head_only)
        self._timeout = read_timeout
        if self._parser is None:
            self._parser = HttpResponseParser(self)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def request_sent(self) -> None:
        """The whole request is written: from now on the upstream has read_timeout per read."""
        self._sent = True
        if self._timer is None and self._error is None and self._phase in (HEAD, BODY):
            self._activity = self._loop.time()
            self._timer = self._loop.call_at(self._activity + self._timeout, self._on_timer)

    async def send_body(self, body: AsyncIterable[bytes], length: int | None) -> None:
        """Stream the request body: as chunks when `length` is None, else exactly `length` bytes."""
        transport = self.transport
        assert transport is not None
        sent = 0
        async for chunk in body:
            if self.closed:
                return              # the upstream went away: the answer side says how
            if not chunk:
                continue
            sent += len(chunk)
            if length is None:
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            elif sent > length:
                raise BodyMismatch("the request body is longer than its Content-Length")
            else:
                transport.write(chunk)
            if self._writing_paused:
                await self._drain()
        if self.closed:
            return
        if length is None:
            transport.write(b"0\r\n\r\n")
        elif sent != length:
            raise BodyMismatch("the request body is shorter than its Content-Length")

    def fail(self, error: BaseException) -> None:
        """The exchange cannot go on (its request body failed): the connection is closed, and a caller
        still waiting for the answer gets `error`."""
        self._fail(error)

    async def head(self) -> None:
        """Wait for the final answer's head (interim 1xx answers are skipped).  A failure already known
        (a bad chunk in the bytes that came with the head) is raised now: nothing has been relayed yet."""
        while not self._final:
            if self._error is not None:
                raise self._error
            await self._wait()
        if self._error is not None:
            raise self._error

    async def read(self) -> bytes:
        """The body bytes that have arrived (waiting for some if none have); b"" at the end of the body."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                self._chunks = []
                self._buffered = 0
                if self._reading_paused:
                    self._resume_reading()
                return data
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait()

    def ready(self) -> bool:
        return bool(self._chunks) or self._complete

    def at_end(self) -> bool:
        return self._complete and not self._chunks

    def reusable(self) -> bool:
        return (self._complete and self._keep_alive and self._sent and not self._spoiled and self._error is None
                and not self.closed)

    def finish(self) -> None:
        """The exchange is over (reused or not, the pool decides next)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._phase = IDLE
        self._chunks = []
        self._buffered = 0
        self.headers = []
        if self._reading_paused:
            self._resume_reading()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    async def _wait(self) -> None:
        loop = self._loop
        waiter = loop.create_future()
        self._waiter = waiter
        self._activity = loop.time()
        if self._sent and self._timer is None:
            self._timer = loop.call_at(self._activity + self._timeout, self._on_timer)
        try:
            await waiter
        finally:
            self._waiter = None

    def _on_timer(self) -> None:
        """read_timeout counts while the caller waits for the upstream and no byte arrives; not while the
        caller is busy elsewhere (writing to a slow client, with reading paused)."""
        self._timer = None
        if self._phase not in (HEAD, BODY) or self._error is not None or self.closed:
            return
        now = self._loop.time()
        due = self._activity + self._timeout
        if self._waiter is None:
            due = now + self._timeout
        elif now >= due:
            self._fail(ReadTimeout("the upstream sent nothing for read_timeout"))
            return
        self._timer = self._loop.call_at(due, self._on_timer)

    async def _drain(self) -> None:
        waiter = self._loop.create_future()
        self._drain_waiter = waiter
        timer = self._loop.call_later(self._timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._drain_waiter = None

    def _fail(self, error: BaseException) -> None:
        self._spoiled = True
        if not self._complete and self._error is None:
            self._error = error
        self.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _resume_reading(self) -> None:
        self._reading_paused = False
        if not self.closed and self.transport is not None:
            self.transport.resume_reading()

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport: uvloop's implement asyncio.Transport without subclassing it (no isinstance).
        self.transport = cast(asyncio.Transport, transport)
        self._tls = transport.get_extra_info("ssl_object") is not None

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase == BODY:
            self._activity = self._loop.time()
            self._body_data(data)
        elif phase == HEAD:
            self._activity = self._loop.time()
            self.answered = True
            self._head_data(data)
        else:
            self._unsolicited()
            return
        if self._final or self._error is not None:
            self._wake()

    def eof_received(self) -> bool | None:
        self._input_ended(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._input_ended(exc)
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._parser = None
        self._on_lost(self)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def _unsolicited(self) -> None:
        """Bytes nobody asked for: after the answer, or while pooled.  Never read as the next answer."""
        self._spoiled = True
        if self._phase == IDLE:
            self.abort()

    def _input_ended(self, exc: BaseException | None) -> None:
        phase = self._phase
        if phase == IDLE:
            self.closed = True
            return
        if phase == DONE or self._complete or self._error is not None:
            self._spoiled = True
            return
        if phase == BODY and self._until_close and exc is None and not self._tls:
            self._complete = True
            self._phase = DONE
            self._wake()
            return
        if phase == BODY and self._until_close and exc is None:
            # asyncio reports the end of a TLS connection alike with and without close_notify, so a body
            # that ends with the connection cannot be told from one an attacker on the path cut short.
            self._fail(ConnectionClosed("a TLS upstream ended a body delimited by the connection's close: it may "
                                        "have been cut short", answered=True))
        elif phase == BODY:
            self._fail(ConnectionClosed("the upstream closed the connection before the end of the body", answered=True))
        else:
            self._fail(ConnectionClosed("the upstream closed the connection before answering" if not self.answered
                                        else "the upstream closed the connection inside the answer's head",
                                        answered=self.answered))

    # --- feeding llhttp ---

    def _head_data(self, data: bytes) -> None:
        start, size = 0, len(data)
        limit = self._limits.max_head_bytes
        while start < size:
            end = self._end_of_head(data, start)
            stop = size if end < 0 else end
            self._head_bytes += stop - start
            if self._head_bytes > limit:
                self._fail(HeadTooLarge(f"the answer's head exceeds {limit} bytes"))
                return
            self._tail = b"" if end >= 0 else (self._tail + data[max(start, stop - 3):stop])[-3:]
            self._feed(data if start == 0 and stop == size else data[start:stop])
            if self._error is not None:
                return
            if self._final:
                self._after_head(data, stop)
                return
            start = stop           # an interim answer ended (or empty lines before a status line)

    def _end_of_head(self, data: bytes, start: int) -> int:
        tail = self._tail
        if tail:
            found = (tail + data[start:start + 3]).find(_END_OF_HEAD)
            if found >= 0:
                return start + found + 4 - len(tail)
        found = data.find(_END_OF_HEAD, start)
        return found + 4 if found >= 0 else -1

    def _after_head(self, data: bytes, stop: int) -> None:
        rest = stop < len(data)
        if self._complete:                 # no body by its status, or Content-Length: 0
            self._spoiled = self._spoiled or rest
            return
        if self._head_only:
            # llhttp would read the body the Content-Length announces: this parser is done.
            self._parser = None
            self._complete = True
            self._phase = DONE
            self._spoiled = self._spoiled or rest
            return
        self._phase = BODY
        if rest:
            self._body_data(data[stop:])

    def _body_data(self, data: bytes) -> None:
        before = self._buffered
        self._feed(data)
        if self._buffered == before and not self._complete:
            self._gap += len(data)
            if self._gap > self._limits.max_head_bytes:
                self._fail(BadResponse("chunk framing or trailers without body bytes exceed the head bound"))
                return
        else:
            self._gap = 0
        if self._buffered > self._limits.high_water and not self._reading_paused and not self.closed:
            self._reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def _feed(self, data: bytes) -> None:
        parser = self._parser
        assert parser is not None
        try:
            parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as exc:
            error, self._callback_error = self._callback_error, None
            if self._complete:             # past the answer: bytes after it, data after Connection: close
                self._spoiled = True
                self._parser = None
                return
            self._fail(error or BadResponse(f"malformed answer: {exc}"))

    def _refuse(self, error: BaseException) -> None:
        self._callback_error = error
        raise _Stop

    # --- llhttp callbacks (httptools) ---

    def on_message_begin(self) -> None:
        if self._complete:                 # a second answer to one request: never read as the next one's
            self._spoiled = True
            raise _Stop

    def on_status(self, status: bytes) -> None:
        self.reason += status              # llhttp may hand the reason phrase over in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._final:
            return                         # trailer fields after a chunked body: not forwarded
        headers = self.headers
        if len(headers) >= self._limits.max_headers:
            self._refuse(HeadTooLarge(f"the answer has more than {self._limits.max_headers} header fields"))
        size = len(name)
        if size == 17 or size == 14 or size == 10:
            lowered = name.lower()
            if lowered == b"transfer-encoding":
                # Only a plain `chunked`, once: any other coding would reach the client undecoded and unlabelled.
                if self._chunked or value.strip().lower() != b"chunked":
                    self._refuse(BadResponse("unsupported Transfer-Encoding in the answer"))
                self._chunked = True
            elif lowered == b"content-length":
                self._has_length = True
            elif lowered == b"connection":
                tokens = {token.strip() for token in value.lower().split(b",")}
                self._close = self._close or b"close" in tokens
                self._keep_alive_token = self._keep_alive_token or b"keep-alive" in tokens
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            self._refuse(BadResponse(f"an HTTP/{version} answer on an HTTP/1.1 connection"))
        status = parser.get_status_code()
        if status == 101:
            self._refuse(BadResponse("101 Switching Protocols to a request that asked for no upgrade"))
        if not 100 <= status <= 599:
            self._refuse(BadResponse(f"status {status} is out of range"))
        if status < 200:
            self._interim = True
            return
        self._final = True
        self.status = status
        no_body = self._head_only or status == 204 or status == 304
        self._until_close = not no_body and not self._chunked and not self._has_length
        persistent = not self._close and (version == "1.1" or self._keep_alive_token)
        self._keep_alive = persistent and not self._until_close

    def on_body(self, body: bytes) -> None:
        if not self._final:
            self._refuse(BadResponse("an interim (1xx) answer with a body"))
        self._chunks.append(body)
        self._buffered += len(body) + _PIECE_OVERHEAD

    def on_message_complete(self) -> None:
        if self._interim:
            self._interims += 1
            if self._interims > _MAX_INTERIM:
                self._refuse(BadResponse(f"more than {_MAX_INTERIM} interim (1xx) answers"))
            self._interim = False
            self.reason = b""
            self.headers = []
            self._chunked = self._has_length = self._close = self._keep_alive_token = False
            return
        self._complete = True
        self._phase = DONE
