"""A real OTLP/HTTP receiver for the tests, as a process of its own: oteltest's HttpSink (its HTTP handling and
OTLP decoding, from PyPI), bound to loopback (the sink itself listens on every interface), writing each
ExportTraceServiceRequest it receives to DIR (made if missing) as <n>.pb, written aside and then renamed so
that a reader never sees half a file, and printing a line per span (service, trace id, span id, parent,
name, attributes). The sink reads a body by its Content-Length only; a chunked one is de-chunked first.

Usage: python tests/harness/otlp_receiver.py --port PORT --out DIR"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import logging
import os
from http.server import HTTPServer
from pathlib import Path
from typing import Any

import oteltest.sink
from google.protobuf.json_format import MessageToDict
from oteltest.sink.handler import RequestHandler

HOST = "127.0.0.1"


MAX_BODY = 64 * 1024 * 1024


def _read_chunked(rfile: Any) -> bytes:
    body = b""
    while True:
        size = int(rfile.readline(64).split(b";", 1)[0].strip(), 16)
        if size == 0:
            while rfile.readline(1024).strip():      # trailers, up to the blank line
                pass
            return body
        body += rfile.read(size)
        rfile.readline(8)                            # the CRLF after the chunk
        if len(body) > MAX_BODY:
            raise ValueError("body too large")


def _dechunking(handler: Any) -> Any:
    """The sink's handler, also for a chunked body (Envoy's OTLP exporter sends one; the sink reads
    Content-Length only): the body is read whole and handed on with its length."""

    class Dechunking(handler):  # type: ignore[misc, valid-type]
        def parse_request(self) -> bool:
            if not super().parse_request():
                return False
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = _read_chunked(self.rfile)
                del self.headers["Transfer-Encoding"]
                self.headers["Content-Length"] = str(len(body))
                self.rfile = io.BytesIO(body)
            return True

    return Dechunking


class _LoopbackServer(HTTPServer):
    def __init__(self, address: tuple[str, int], handler: Any) -> None:
        super().__init__((HOST, address[1]), _dechunking(handler))


class _Writer(RequestHandler):
    def __init__(self, out: Path) -> None:
        self._out = out
        self._numbers = itertools.count(1)

    def handle_trace(self, request: Any, headers: Any) -> None:
        number = next(self._numbers)
        aside = self._out / f".{number}.tmp"
        aside.write_bytes(request.SerializeToString())
        os.replace(aside, self._out / f"{number:06d}.pb")
        for resource_spans in request.resource_spans:       # and a line per span, for a person watching
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    attributes = {a.key: MessageToDict(a.value) for a in span.attributes}
                    print(service, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex() or "-",
                          span.name, json.dumps(attributes, separators=(",", ":")), flush=True)

    def handle_metrics(self, request: Any, headers: Any) -> None:
        pass

    def handle_logs(self, request: Any, headers: Any) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO)
    oteltest.sink.HTTPServer = _LoopbackServer    # type: ignore[misc]   # the sink names its server class here
    sink = oteltest.sink.HttpSink(_Writer(args.out), logging.getLogger("otlp-receiver"), port=args.port, daemon=False)
    sink.start()


if __name__ == "__main__":
    main()
