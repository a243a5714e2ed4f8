"""Tracing's own cost per request, in process and without the network: the calls one proxied request makes
(server span, verify, decide, audit append, upstream, stamping, inject) timed with tracing off, on but not
sampled, and on and sampled (the spans made and ended, the export left out), and the OTLP encoding of one
exported span apart.  A wrk sitting on a shared machine cannot resolve a few µs; these can: each figure is the
best of several repeats, since a neighbour's load only ever adds to one."""

from __future__ import annotations

import asyncio
import time
import timeit
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
REPEATS = 15
ACCESS = AccessRequest(Surface.PROXY, "bench-request-0001", "GET", "orders.internal", "/v1/orders/7", "127.0.0.1")
IDENTITY = make_identity(groups=("data-eng",))
DECISION = Decision(True, "etl-read-orders", (Reason.MATCHED,), IDENTITY)
# What the reverse proxy hands inject() for the benchmark's request: the client's headers as cleaned, and
# idgate's own (the identity headers, the assertion, X-Request-Id, the forwarding headers).
UPSTREAM_HEADERS = (("Accept", "*/*"), ("User-Agent", "wrk"), ("X-Idgate-Subject", "svc-bench"),
                    ("X-Idgate-Issuer", "http://127.0.0.1:9400"), ("X-Idgate-Groups", "data-eng"),
                    ("X-Idgate-Assertion", "eyJhbGciOiJFUzI1NiJ9.e30.sig"), ("X-Request-Id", "bench-request-0001"),
                    ("X-Forwarded-For", "127.0.0.1"), ("X-Forwarded-Host", "orders.internal"),
                    ("X-Forwarded-Proto", "http"))
TRUSTED, STRANGER = "127.0.0.1", "192.0.2.1"


class _Kept(SpanExporter):
    """Keeps the last batch (for the encoding figure) and exports nothing."""

    def __init__(self) -> None:
        self.batch: Sequence[ReadableSpan] = ()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.batch = spans
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _request(tracing: Tracing, peer: str = TRUSTED) -> Callable[[], None]:
    headers: CIMultiDict[str] = CIMultiDict()

    def one() -> None:
        record: dict[str, object] = {}
        with tracing.server(Surface.PROXY, "GET", peer, headers) as server:
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
                tracing.inject(list(UPSTREAM_HEADERS))
                upstream.set("http.response.status_code", 200)
            tracing.stamp(record)
            server.answered(200)
    return one


def _copying_headers() -> None:
    list(UPSTREAM_HEADERS)          # what every row does besides tracing: subtracted from each


def _per_call_us(call: Callable[[], None], count: int, repeats: int = REPEATS) -> float:
    """The best of `repeats` runs of `count // repeats` calls, less the header copy each call makes."""
    number = max(1, count // repeats)
    for _ in range(number // 4):
        call()
    best = min(timeit.repeat(call, number=number, repeat=repeats)) / number
    bare = min(timeit.repeat(_copying_headers, number=number, repeat=repeats)) / number
    return round(max(0.0, best - bare) * 1e6, 2)


def tracing_cost(requests: int = REQUESTS) -> dict[str, float]:
    figures = {"tracing off (µs per request)": _per_call_us(_request(NO_TRACING), requests)}
    for name, ratio, peer in (("on, not sampled, trusted peer", 0.0, TRUSTED),
                              ("on, not sampled, stranger", 0.0, STRANGER),
                              ("on, sampled: spans made and ended", 1.0, TRUSTED)):
        kept = _Kept()
        tracing = OtelTracing(TracingConfig(sampling_ratio=ratio, max_queue_size=100_000),
                              TrustedProxies([f"{TRUSTED}/32"]), Metrics(), exporter=kept)
        # Sampled spans queue for the export thread, and the garbage collector walks them there: one run of
        # 2,000 (a batch the thread drains meanwhile), whose mean includes that, not the best of short ones.
        figures[f"tracing {name} (µs per request)"] = (_per_call_us(_request(tracing, peer), requests) if ratio == 0
                                                       else _per_call_us(_request(tracing, peer), 2_000, repeats=1))
        asyncio.run(tracing.flush())           # the last batch: what the encoding figure encodes
        if kept.batch:
            started = time.perf_counter()
            encode_spans(kept.batch).SerializePartialToString()
            figures["OTLP encoding (µs per exported span)"] = round(
                (time.perf_counter() - started) / len(kept.batch) * 1e6, 2)
        asyncio.run(tracing.close())
    return figures
