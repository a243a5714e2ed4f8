"""Structured logs: one JSON object per line on stderr, with any `extra=` fields merged in, every value
redacted of credentials, aiohttp's records classified, and repeated identical lines rate-limited."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from aiohttp.http_exceptions import HttpProcessingError

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


_BODY_LOGGING_LIBRARIES = ("botocore", "boto3", "urllib3", "s3transfer", "hpack")

# -- redaction ----------------------------------------------------------------------------------------
# Tokens reach log text through exception messages and reprs (a header list, a dict, the bytes a parser
# refused), so values are found by their shape and by the name in front of them, in any quoting.
REDACTED = "[redacted]"
_SECRET_NAMES = (r"(?:proxy-)?authorization|x-amz-security-token|x-amz-signature|signature|cookie|set-cookie"
                 r"|(?:aws_)?session_?token|sessiontoken|(?:aws_)?secret_?access_?key|secretaccesskey"
                 r"|(?:access|id|refresh|subject|web_?identity)_?token|client_?secret|password|assertion")
_REDACTIONS = (
    # A named secret: `Authorization: x`, `'authorization': 'x'`, `('authorization', 'x')`, `token=x`,
    # `<SessionToken>x`, `"SecretAccessKey": "x"`; an authorization scheme goes with its credentials.
    (re.compile(rf"(?i)\b({_SECRET_NAMES})(\\?[\"']?\s*[:=,]\s*(?-i:b)?\\?[\"']?|>)"
                r"(?:(?:bearer|basic)\s+)?[^\s\"'\\,;&<>)}\]]+"), rf"\1\2{REDACTED}"),
    # `Bearer <token>`, `Basic <credentials>` anywhere else: the scheme stays, the credentials go.
    (re.compile(r"(?i)\b(bearer|basic)(\s+|\\x20|%20)[A-Za-z0-9\-._~+/]+=*"), rf"\1\2{REDACTED}"),
    # A JWT wherever it stands (three base64url parts, the first a JSON object).
    (re.compile(r"\beyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]+\.?[A-Za-z0-9_-]*"), REDACTED),
)


def redact(text: str) -> str:
    """`text` with anything credential-looking replaced by [redacted]."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


_SECRET_NAME = re.compile(rf"(?i)(?:{_SECRET_NAMES})")


def _redact_value(value: Any, depth: int = 0) -> Any:
    """An `extra=` value, redacted as deep as JSON will print it (a dict's secret-named keys by name)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if depth > 8:
        return redact(str(value))
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and _SECRET_NAME.fullmatch(k) else _redact_value(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(v, depth + 1) for v in value]
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        entry.update({k: _redact_value(v) for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


# -- aiohttp's server records -------------------------------------------------------------------------

def is_client_disconnect(exc: BaseException | None) -> bool:
    """The client went away: an outcome, already in the request's record, not a fault of idgate's.
    aiohttp's ClientConnectionResetError is a ConnectionResetError.  Only the error as raised counts: one
    raised *from* a reset (an upstream's, translated) or while handling one is not the client leaving,
    and a crash must keep its traceback."""
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, asyncio.CancelledError)):
        return True
    return isinstance(exc, ConnectionError) and "connection lost" in str(exc).lower()


def classify_aiohttp_server(record: logging.LogRecord) -> bool:
    """aiohttp's server logs every exception around a request at ERROR: a client that went away is
    DEBUG, a request its parser refused is INFO with the peer and without the bytes (they can be an
    Authorization header), and anything else is the crash it is, at ERROR with its traceback (the
    formatter redacts the traceback's text)."""
    exc = record.exc_info[1] if record.exc_info else None
    if exc is None:
        return True
    if is_client_disconnect(exc):
        _relevel(record, logging.DEBUG)
        record.msg, record.args = "client disconnected", ()
        record.exc_info, record.exc_text = None, None
        record.disconnect = type(exc).__name__
    elif isinstance(exc, HttpProcessingError):
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
        _relevel(record, logging.INFO)
        record.msg, record.args = "request refused by the HTTP parser", ()
        record.exc_info, record.exc_text = None, None
        record.refused = type(exc).__name__
        record.peer = str(peer) if peer is not None else "unknown"
    return logging.getLogger(record.name).isEnabledFor(record.levelno)


def _relevel(record: logging.LogRecord, level: int) -> None:
    record.levelno, record.levelname = level, logging.getLevelName(level)


# -- rate limiting ------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Window:
    ends: float
    emitted: int = 0
    suppressed: int = 0
    first: logging.LogRecord | None = field(default=None, repr=False)   # a suppressed line, for its summary


Key = tuple[str, int, str, str]


class RateLimit:
    """At most `burst` lines per `interval` seconds for one key (logger, level, message template,
    exception type); the rest are counted, and one line says how many once the window has ended: on the
    next line of that key, or on any line after it, so no timer is needed.  Thread-safe (the audit's
    file thread logs too)."""

    def __init__(self, burst: int = 5, interval: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 1024) -> None:
        self._burst, self._interval, self._clock, self._max_keys = burst, interval, clock, max_keys
        self._windows: OrderedDict[Key, _Window] = OrderedDict()     # oldest window first
        self._lock = threading.Lock()

    def admit(self, record: logging.LogRecord) -> tuple[bool, list[logging.LogRecord]]:
        """Whether `record` goes out, and the summaries of windows that ended, to go out before it."""
        exc = record.exc_info[1] if record.exc_info else None
        key = (record.name, record.levelno, str(record.msg), type(exc).__name__ if exc is not None else "")
        with self._lock:
            now = self._clock()
            summaries = self._expire(now)
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(now + self._interval)
                while len(self._windows) > self._max_keys:
                    _, old = self._windows.popitem(last=False)
                    if old.suppressed:
                        summaries.append(self._summary(old))
            if window.emitted < self._burst:
                window.emitted += 1
                return True, summaries
            window.suppressed += 1
            if window.first is None:
                window.first = record
            return False, summaries

    def _expire(self, now: float) -> list[logging.LogRecord]:
        summaries = []
        # Windows are ordered by their start, and all are the same length: the ended ones come first.
        while self._windows:
            key, window = next(iter(self._windows.items()))
            if window.ends > now:
                break
            del self._windows[key]
            if window.suppressed:
                summaries.append(self._summary(window))
        return summaries

    def _summary(self, window: _Window) -> logging.LogRecord:
        line = window.first
        assert line is not None
        summary = logging.makeLogRecord({
            "name": line.name, "levelno": line.levelno, "levelname": line.levelname,
            "msg": "%d identical log line(s) suppressed in %g s: %s",
            "args": (window.suppressed, self._interval, str(line.msg)),
            "suppressed": window.suppressed,
        })
        return summary


class RateLimitedHandler(logging.StreamHandler[TextIO]):
    """The StreamHandler configure() installs: its filters first, then the rate limit."""

    def __init__(self, stream: TextIO, limit: RateLimit) -> None:
        super().__init__(stream)
        self.limit = limit

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.filter(record):
            return False
        admitted, summaries = self.limit.admit(record)
        for summary in summaries:
            super().handle(summary)
        if admitted:
            super().handle(record)
        return admitted


LEVELS = ("debug", "info", "warning", "error", "critical")     # what `serve --log-level` accepts


def configure(level: str = "info", stream: TextIO = sys.stderr, *, limit: RateLimit | None = None) -> None:
    handler = RateLimitedHandler(stream, limit or RateLimit())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # On the logger rather than the handler: the level it gives a record decides whether it is handled.
    server = logging.getLogger("aiohttp.server")
    if classify_aiohttp_server not in server.filters:
        server.addFilter(classify_aiohttp_server)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # Their DEBUG output carries request and response bodies: STS secrets, session and web-identity
    # tokens.  Whatever --log-level says, they log warnings and errors only.
    for name in _BODY_LOGGING_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
