"""The OTLP/HTTP receiver the tracing tests export to (tests/harness/otlp_receiver.py, oteltest's sink) as a
server process on a free loopback port, ready once it accepts connections, always stopped; and what it
received, read back as spans (OpenTelemetry's protobuf messages) and as raw bytes."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.harness.paths import HARNESS
from tests.harness.processes import HOST, ManagedServer, ServerProcess, eventually, free_port


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    return getattr(value, kind) if kind else None


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    kind: int                       # opentelemetry.proto.trace.v1.Span.SpanKind
    trace_id: str                   # hex, as idgate's audit records write it
    span_id: str
    parent_span_id: str             # "" for a root span
    attributes: dict[str, Any]
    status: int                     # Status.StatusCode: 0 unset, 1 ok, 2 error


class OtlpReceiver(ManagedServer):
    def __init__(self) -> None:
        self._server = ServerProcess("otlp-receiver")
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}/v1/traces"

    @property
    def _out(self) -> Path:
        return self._server.workdir / "received"

    def start(self) -> None:
        self.port = free_port()
        self._out.mkdir(parents=True, exist_ok=True)
        self._server.start([sys.executable, str(HARNESS / "otlp_receiver.py"), "--port", str(self.port),
                            "--out", str(self._out)])
        with self._stopped_on_failure():
            self._server.wait_until(self._accepts, "accepting connections")

    def _accepts(self) -> bool | None:
        with socket.create_connection((HOST, self.port), timeout=1):
            return True

    def raw(self) -> bytes:
        """Every export request received so far, as it was sent (protobuf), concatenated."""
        return b"".join(path.read_bytes() for path in sorted(self._out.glob("*.pb")))

    def spans(self) -> list[ReceivedSpan]:
        found = []
        for path in sorted(self._out.glob("*.pb")):
            request = ExportTraceServiceRequest.FromString(path.read_bytes())
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        found.append(ReceivedSpan(
                            str(resource.get("service.name", "")), span.name, span.kind, span.trace_id.hex(),
                            span.span_id.hex(), span.parent_span_id.hex(),
                            {a.key: _value(a.value) for a in span.attributes}, span.status.code))
        return found

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans() if span.trace_id == trace_id]

    async def wait_for_trace(self, trace_id: str, done: Callable[[list[ReceivedSpan]], bool],
                             what: str) -> list[ReceivedSpan]:
        """The trace's spans once `done` holds for them (the exporters send in batches, a second apart)."""
        await eventually(lambda: done(self.trace(trace_id)), what, timeout=20.0)
        return self.trace(trace_id)
