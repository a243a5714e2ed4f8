"""Tracing's own cost per request, in process and without the network: the calls one proxied request makes
(server span, verify, decide, audit append, upstream, stamping, inject) timed with tracing off, on but not
sampled, and on and sampled (the spans made and ended, the export left out), and the OTLP encoding of one
exported span apart.  A wrk sitting on a shared machine cannot resolve a few µs; these can."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from multidict import CIMultiDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from proxy.config import TracingConfig
from proxy.core.headers import TrustedProxies
from proxy.core.model import AccessRequest, Decision, Surface
from proxy.core.reasons import Reason
from proxy.metrics import Metrics
from proxy.tracing import NO_TRACING, SpanName, Tracing
from proxy.tracing.otel import OtelTracing
from tests.factories import make_identity

REQUESTS = 20_000
ACCESS = AccessRequest(Surface.PROXY, "bench-request-0001", "GET", "orders.internal", "/v1/orders/7", "127.0.0.1")
IDENTITY = make_identity(groups=("data-eng",))
DECISION = Decision(True, "etl-read-orders", (Reason.MATCHED,), IDENTITY)


class _Kept(SpanExporter):
    """Keeps the last batch (for the encoding figure) and exports nothing."""

    def __init__(self) -> None:
        self.batch: Sequence[ReadableSpan] = ()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.batch = spans
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _request(tracing: Tracing) -> Callable[[], None]:
    headers: CIMultiDict[str] = CIMultiDict()

    def one() -> None:
        record: dict[str, object] = {}
        with tracing.server(Surface.PROXY, "GET", "127.0.0.1", headers) as server:
            tracing.admitted(ACCESS)
            with tracing.span(SpanName.TOKEN_VERIFY) as verify:
                verify.set("idgate.token.cache", "hit")
            tracing.identified(IDENTITY)
            with tracing.span(SpanName.AUTHORIZE):
                tracing.decided(DECISION)
            tracing.stamp(record)
            with tracing.span(SpanName.AUDIT_APPEND):
                tracing.recorded(1)
            with tracing.client(SpanName.UPSTREAM) as upstream:
                tracing.inject([("Accept", "*/*")])
                upstream.set("http.response.status_code", 200)
            tracing.stamp(record)
            server.answered(200)
    return one


def _per_call_us(call: Callable[[], None], count: int) -> float:
    for _ in range(count // 10):
        call()
    started = time.perf_counter()
    for _ in range(count):
        call()
    return round((time.perf_counter() - started) / count * 1e6, 2)


def tracing_cost(requests: int = REQUESTS) -> dict[str, float]:
    figures = {"tracing off (µs per request)": _per_call_us(_request(NO_TRACING), requests)}
    for name, ratio in (("on, not sampled", 0.0), ("on, sampled: spans made and ended", 1.0)):
        kept = _Kept()
        tracing = OtelTracing(TracingConfig(sampling_ratio=ratio, max_queue_size=100_000), TrustedProxies(()),
                              Metrics(), exporter=kept)
        # Sampled spans queue for the export thread: measure in batches it drains between them.
        figures[f"tracing {name} (µs per request)"] = _per_call_us(_request(tracing), requests if ratio == 0 else 2_000)
        asyncio.run(tracing.flush())           # the last batch: what the encoding figure encodes
        if kept.batch:
            started = time.perf_counter()
            encode_spans(kept.batch).SerializePartialToString()
            figures["OTLP encoding (µs per exported span)"] = round(
                (time.perf_counter() - started) / len(kept.batch) * 1e6, 2)
        asyncio.run(tracing.close())
    return figures
