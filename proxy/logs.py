"""Structured logs: one JSON object per line on stderr, with any `extra=` fields merged in."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


_BODY_LOGGING_LIBRARIES = ("botocore", "boto3", "urllib3", "s3transfer", "hpack")


def _redact_aiohttp_server(record: logging.LogRecord) -> bool:
    if record.name == "aiohttp.server":
        return ParserErrorRedaction().filter(record)
    return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ParserErrorRedaction(logging.Filter):
    """aiohttp logs a request its parser refused with the offending bytes (which can be an
    Authorization header) in the traceback: keep the fact, drop the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.refused = type(record.exc_info[1]).__name__
            record.exc_info = None
            record.exc_text = None
        record.msg, record.args = "request refused by the HTTP parser", ()
        return True


def configure(level: str = "info", stream: TextIO = sys.stderr) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_redact_aiohttp_server)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # Their DEBUG output carries request and response bodies: STS secrets, session and web-identity
    # tokens.  Whatever --log-level says, they log warnings and errors only.
    for name in _BODY_LOGGING_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
