"""idgate's HTTP/1.1 connection handling on top of aiohttp's: the bounds aiohttp does not have and the
answers it must not give.

* Connections are capped in all and per peer (trusted proxies count only towards the total), and a
  request head is bounded in bytes and in time while it is still being read, so unfinished heads
  cannot grow the process.
* Whatever aiohttp's parser refuses (a duplicate Host, obs-fold, a tab in the target, a lowercase
  method, an oversized line) is answered with idgate's JSON error, never with aiohttp's page, which
  echoes the offending bytes (a bearer token, say) and names aiohttp's version; the refusal is counted
  and logged with the peer, without the bytes.  A handler that crashes is logged as a crash, with its
  traceback, and answered 500 the same way; a client that went away mid-exchange is only a debug line.
* A framing error in a request body that arrives after the head was admitted (a bad chunk size) fails
  that request's body at once, so the surface answers 400 and records the outcome, instead of waiting
  for the idle timer while the upstream connection is held.

The hooks are aiohttp's RequestHandler methods (handle_error, data_received, connection_made/lost).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from proxy.config import LimitsConfig
from proxy.core.errors import BadRequest
from proxy.core.headers import request_id
from proxy.core.reasons import Reason
from proxy.logs import is_client_disconnect

log = logging.getLogger("idgate.http")

_STATUS_CODES = {400: "bad_request", 408: "request_timeout", 413: "too_large", 417: "expectation_failed",
                 431: "headers_too_large",
                 500: "internal", 503: "unavailable", 504: "gateway_timeout"}


def error_body(status: int, message: str, rid: str) -> bytes:
    return json.dumps({"code": _STATUS_CODES.get(status, "bad_request"), "message": message, "request_id": rid},
                      separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class ConnectionBounds:
    max_connections: int
    max_connections_per_peer: int
    max_head_bytes: int
    header_timeout: float

    @classmethod
    def of(cls, limits: LimitsConfig) -> ConnectionBounds:
        return cls(limits.max_connections, limits.max_connections_per_peer, limits.max_head_bytes,
                   limits.header_timeout)


Refusal = Callable[[str], None]          # called with a short reason: a metric label
# After refusing a head, the rest of what the client already sent is read and dropped for this long
# before the connection closes: closing with unread bytes would reset it, and the client would never
# read the answer.
LINGER_SECONDS = 1.0


class GuardedServer(web.Server):
    """aiohttp's Server making GuardedRequestHandlers; it holds the per-listener bounds and counts."""

    bounds: ConnectionBounds
    is_trusted: Callable[[str], bool]
    on_refusal: Refusal
    open_connections: int
    peers: Counter[str]

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)

    @classmethod
    def adopt(cls, server: web.Server, bounds: ConnectionBounds, is_trusted: Callable[[str], bool],
              on_refusal: Refusal) -> GuardedServer:
        """aiohttp's AppRunner builds its Server itself: take that one over (same state, our handler)."""
        server.__class__ = cls
        guarded: GuardedServer = server  # type: ignore[assignment]
        guarded.bounds, guarded.is_trusted, guarded.on_refusal = bounds, is_trusted, on_refusal
        guarded.open_connections, guarded.peers = 0, Counter()
        return guarded


class GuardedRequestHandler(RequestHandler):
    _guard: GuardedServer
    _peer: str | None = None             # set once the connection is admitted
    _head_bytes = 0                      # bytes of a request head still being read
    _head_deadline: asyncio.TimerHandle | None = None
    _discarding = False                  # a refused head's answer is written: drop what still arrives
    _body: Any = None                    # the last request's body stream, while its bytes may still arrive

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard: GuardedServer = self._manager  # type: ignore[assignment]
        self._guard = guard
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if peername else "unknown"
        bounds = guard.bounds
        reason = None
        if guard.open_connections >= bounds.max_connections:
            reason = "max_connections"
        elif guard.peers[peer] >= bounds.max_connections_per_peer and not guard.is_trusted(peer):
            reason = "max_connections_per_peer"
        if reason is not None:
            guard.on_refusal(reason)
            log.info("connection refused", extra={"peer": peer, "reason": reason})
            _answer(transport, 503, "too many connections", request_id(None, trusted_peer=False))
            transport.close()
            return
        self._peer = peer
        guard.open_connections += 1
        guard.peers[peer] += 1
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._peer is None:
            return                       # refused in connection_made: aiohttp never saw it
        guard = self._guard
        guard.open_connections -= 1
        guard.peers[self._peer] -= 1
        if guard.peers[self._peer] <= 0:
            del guard.peers[self._peer]
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._peer is None or self._discarding:
            return
        # Once the last request's body is complete, whatever arrives belongs to the next head, also while
        # that request is still being answered (a pipelined head is bounded like any other).
        reading_head = self._payload_parser is None and (self._body is None or self._body.is_eof())
        request = self._current_request
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued:
            self._body = self._messages[-1][1]
            self._head_bytes = 0
            self._cancel_head_deadline()
            if request is not None and isinstance(self._messages[-1][0], _ErrInfo):
                # The parser refused bytes of this request's body: this request answers for them.
                self._messages.pop()
                request.content.set_exception(
                    BadRequest("the request body is not valid HTTP framing", reason=Reason.MALFORMED_BODY))
                self.close()             # the parser is lost: no further request on this connection
        elif reading_head and not self._force_close:
            # Still inside a head: count it (over by at most one read, since the bytes that end a head
            # are never counted, and a body in the same read is not), and give it a deadline.
            self._head_bytes += len(data)
            if self._head_bytes > self._guard.bounds.max_head_bytes:
                self._refuse_head(431, "head_too_large", "the request head is too large")
            elif self._head_deadline is None:
                self._arm_head_deadline()

    def _arm_head_deadline(self) -> None:
        # A head has header_timeout to arrive whole, from the connection's start or from its first byte
        # after a request (slow clients); a head that arrives in one piece never needs the timer.
        self._head_deadline = self._loop.call_later(self._guard.bounds.header_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self._head_bytes:
            self._refuse_head(408, "head_timeout", "the request head did not arrive in time")
        elif self._request_count == 0 and self._current_request is None and not self._messages:
            self._guard.on_refusal("idle_connection")    # connected and said nothing
            self.force_close()

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _refuse_head(self, status: int, reason: str, message: str) -> None:
        self._cancel_head_deadline()
        self._guard.on_refusal(reason)
        log.info("request head refused", extra={"peer": self._peer, "reason": reason})
        if self.transport is None:
            return
        if self._current_request is not None or self._messages:
            # A request on this connection is still being answered: no answer can go in front of its
            # response, so drop what arrives (buffering nothing) and close once it is done.
            self._discarding = True
            self.close()
            return
        _answer(self.transport, status, message, request_id(None, trusted_peer=False))
        self._discarding = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._loop.call_later(LINGER_SECONDS, self.force_close)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        rid = request_id(None, trusted_peer=False)
        if isinstance(exc, HttpProcessingError):
            # Refused by the parser: the peer and the kind of refusal, never the bytes (its message
            # quotes the offending line).
            self._guard.on_refusal(type(exc).__name__)
            log.info("request refused by the HTTP parser", extra={"peer": self._peer, "refused": type(exc).__name__,
                                                                  "request_id": rid})
            text = "the request is not valid HTTP"
        elif is_client_disconnect(exc):
            # The client went away mid-request or mid-response: its outcome record says so already,
            # and a soak sees hundreds of these.
            log.debug("client disconnected", extra={"peer": self._peer, "disconnect": type(exc).__name__,
                                                    "request_id": rid})
            text = "the client went away"
        elif status >= 500:
            log.error("request handler failed", exc_info=exc, extra={"peer": self._peer, "request_id": rid})
            text = "internal error" if status == 500 else "the request could not be answered in time"
        else:
            text = "the request is not valid HTTP"
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")   # aiohttp drops the connection
        response = web.Response(status=status, body=error_body(status, text, rid), content_type="application/json",
                                headers={"Server": "idgate", "X-Request-Id": rid, "Cache-Control": "no-store"})
        response.force_close()
        return response


def _answer(transport: asyncio.BaseTransport, status: int, message: str, rid: str) -> None:
    body = error_body(status, message, rid)
    reason = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}[status]
    head = (f"HTTP/1.1 {status} {reason}\r\nServer: idgate\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-Id: {rid}\r\nConnection: close\r\n\r\n").encode()
    # uvloop's transports implement asyncio.WriteTransport without subclassing it (no isinstance).
    cast(asyncio.WriteTransport, transport).write(head + body)


async def deferred_expect(request: web.Request) -> None:
    """aiohttp answers `Expect` before any middleware runs, with its own page for an unknown value and a
    `100 Continue` for anyone.  idgate answers neither here: admission refuses an unknown value like any
    other bad header, and a surface that reads a body sends `100 Continue` once the request is allowed."""


async def idgate_server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "idgate"   # every response, also ones aiohttp makes: never its version


class GuardedAppRunner(web.AppRunner):
    """An AppRunner whose connections are GuardedRequestHandlers."""

    def __init__(self, app: web.Application, bounds: ConnectionBounds, is_trusted: Callable[[str], bool],
                 on_refusal: Refusal, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._bounds, self._is_trusted, self._on_refusal = bounds, is_trusted, on_refusal

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return GuardedServer.adopt(server, self._bounds, self._is_trusted, self._on_refusal)
