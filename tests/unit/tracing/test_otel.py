"""proxy.tracing.otel with the SDK's in-memory exporter: what a request's spans say, what idgate injects
upstream, what a request that is not sampled still carries, and that a full export queue drops (counted)
instead of waiting."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from multidict import CIMultiDict
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from proxy.config import TracingConfig
from proxy.core.errors import AccessDenied
from proxy.core.headers import TrustedProxies
from proxy.core.model import Decision, Surface
from proxy.core.reasons import Reason
from proxy.metrics import Metrics
from proxy.tracing import NO_SPAN
from proxy.tracing.otel import OtelTracing

TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRUSTED = TrustedProxies(["10.0.0.0/8"])


def tracing(exporter: SpanExporter, **config: object) -> tuple[OtelTracing, Metrics]:
    metrics = Metrics()
    return OtelTracing(TracingConfig(**config), TRUSTED, metrics, exporter=exporter), metrics   # type: ignore[arg-type]


def carrier(**headers: str) -> CIMultiDict[str]:
    return CIMultiDict(headers)


async def test_spans_nest_under_the_server_span_and_failures_say_why_without_messages() -> None:
    exporter = InMemorySpanExporter()
    traced, _ = tracing(exporter)
    with traced.server(Surface.PROXY, "GET", "10.1.2.3", carrier(traceparent=f"00-{TRACE}-{SPAN}-01")):
        with traced.span("inner"):
            try:
                with traced.client("call"):
                    raise AccessDenied("no", reason=Reason.NO_MATCHING_RULE)
            except AccessDenied:
                pass
            try:
                with traced.span("broken"):
                    raise ValueError("a message that could quote anything")
            except ValueError:
                pass
        traced.decided(Decision(False, None, (Reason.NO_MATCHING_RULE,)))
    await traced.flush()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    server, inner, call, broken = spans["GET proxy"], spans["inner"], spans["call"], spans["broken"]
    assert server.kind is SpanKind.SERVER and server.parent.span_id == int(SPAN, 16) and server.parent.is_remote
    assert inner.parent.span_id == server.context.span_id and call.parent.span_id == inner.context.span_id
    assert call.kind is SpanKind.CLIENT and call.status.status_code is StatusCode.ERROR
    assert call.attributes["idgate.reason"] == "no_matching_rule" and call.status.description == "no_matching_rule"
    assert broken.attributes["error.type"] == "ValueError" and not broken.status.description and not broken.events
    assert server.attributes["idgate.decision"] == "deny"
    await traced.close()


async def test_inject_replaces_the_trace_context_and_can_speak_xray() -> None:
    exporter = InMemorySpanExporter()
    traced, _ = tracing(exporter, xray_header=True)
    headers = [("TraceParent", "00-evil-01"), ("tracestate", "x=1"), ("X-Amzn-Trace-Id", "Root=evil"), ("Accept", "*/*")]
    with traced.server(Surface.PROXY, "GET", "10.1.2.3", carrier(traceparent=f"00-{TRACE}-{SPAN}-01", tracestate="v=1")):
        with traced.client("idgate.upstream"):
            traced.inject(headers)
    await traced.flush()
    (upstream,) = [s for s in exporter.get_finished_spans() if s.name == "idgate.upstream"]
    span_hex = f"{upstream.context.span_id:016x}"
    assert headers == [("Accept", "*/*"), ("traceparent", f"00-{TRACE}-{span_hex}-01"), ("tracestate", "v=1"),
                       ("X-Amzn-Trace-Id", f"Root=1-{TRACE[:8]}-{TRACE[8:]};Parent={span_hex};Sampled=1")]
    await traced.close()


async def test_inject_replaces_every_spelling_and_leaves_headers_without_trace_context_as_they_were() -> None:
    traced, _ = tracing(InMemorySpanExporter(), xray_header=True, sampling_ratio=0.0)
    with traced.server(Surface.PROXY, "GET", "192.0.2.1", carrier()):
        for spelling in ("TRACEPARENT", "TraceState", "X_AMZN_TRACE_ID", "x-amzn_trace-id", "X_Amzn_Trace_Id"):
            headers = [("Accept", "*/*"), (spelling, "the peer's")]      # each alone: none may hide another
            traced.inject(headers)
            assert [name for name, _ in headers] == ["Accept", "traceparent", "X-Amzn-Trace-Id"], spelling
        plain = [("Accept", "*/*"), ("Trace_State", "not a spelling of tracestate"), ("X-Request-Id", "r-1")]
        traced.inject(plain)
    assert [name for name, _ in plain] == ["Accept", "Trace_State", "X-Request-Id", "traceparent", "X-Amzn-Trace-Id"]
    await traced.close()


async def test_an_untrusted_peer_starts_a_trace_and_a_sampled_out_request_has_no_children_but_its_ids() -> None:
    exporter = InMemorySpanExporter()
    traced, _ = tracing(exporter, sampling_ratio=0.0)
    record: dict[str, object] = {}
    headers: list[tuple[str, str]] = []
    with traced.server(Surface.PROXY, "GET", "192.0.2.1", carrier(traceparent=f"00-{TRACE}-{SPAN}-01")):
        assert traced.span("idgate.authorize") is NO_SPAN and traced.client("idgate.upstream") is NO_SPAN
        traced.stamp(record)
        traced.inject(headers)
    await traced.flush()
    assert exporter.get_finished_spans() == ()
    assert record["trace_id"] != TRACE and len(str(record["trace_id"])) == 32 and len(str(record["span_id"])) == 16
    assert headers == [("traceparent", f"00-{record['trace_id']}-{record['span_id']}-00")]
    outside: dict[str, object] = {}
    traced.stamp(outside)                 # no request: nothing to stamp
    assert outside == {}
    await traced.close()


class Stuck(SpanExporter):
    """An exporter that does not come back until released: a collector that hangs."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(timeout=30)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


async def test_a_full_queue_drops_and_counts_instead_of_waiting() -> None:
    stuck = Stuck()
    traced, metrics = tracing(stuck, max_queue_size=2)
    for _ in range(10):                   # returns although nothing can be exported
        with traced.server(Surface.PROXY, "GET", "10.1.2.3", carrier()):
            pass
    dropped = metrics.trace_spans_dropped.labels("queue_full")._value.get()
    assert 6 <= dropped <= 8              # two in the stuck export at most, two queued
    stuck.release.set()
    await traced.flush()
    assert stuck.exported == 10 - dropped == metrics.trace_spans_exported._value.get()
    await traced.close()


class Refusing(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        pass


async def test_a_failed_export_is_counted() -> None:
    traced, metrics = tracing(Refusing())
    with traced.server(Surface.PROXY, "GET", "10.1.2.3", carrier()):
        pass
    await traced.flush()
    assert metrics.trace_spans_dropped.labels("export_failed")._value.get() == 1
    await traced.close()


async def test_a_trusted_parent_that_is_not_sampled_keeps_its_trace_and_state_but_nothing_is_recorded() -> None:
    exporter = InMemorySpanExporter()
    traced, _ = tracing(exporter)                       # sampling_ratio 1.0: the parent's flag still decides
    record: dict[str, object] = {}
    headers: list[tuple[str, str]] = []
    with traced.server(Surface.PROXY, "GET", "10.1.2.3", carrier(traceparent=f"00-{TRACE}-{SPAN}-00",
                                                                 tracestate="v=1,w=2")):
        assert traced.client("idgate.upstream") is NO_SPAN
        traced.stamp(record)
        traced.inject(headers)
    await traced.flush()
    assert exporter.get_finished_spans() == ()
    assert record["trace_id"] == TRACE and record["span_id"] != SPAN
    assert headers == [("traceparent", f"00-{TRACE}-{record['span_id']}-00"), ("tracestate", "v=1,w=2")]
    await traced.close()


async def test_a_trusted_sampled_parent_is_recorded_whatever_the_ratio() -> None:
    exporter = InMemorySpanExporter()
    traced, _ = tracing(exporter, sampling_ratio=0.0)
    with traced.server(Surface.PROXY, "GET", "10.1.2.3", carrier(traceparent=f"00-{TRACE}-{SPAN}-01")):
        with traced.span("idgate.authorize"):
            pass
    await traced.flush()
    assert {span.name for span in exporter.get_finished_spans()} == {"GET proxy", "idgate.authorize"}
    await traced.close()
