"""How spans leave: OpenTelemetry's BatchSpanProcessor and an exporter on the processor's own thread, so a
request only appends to a bounded queue and a dead or slow collector never holds one up.  idgate bounds
that queue itself so that what it drops is counted in its Prometheus metrics (the SDK counts its drops on
an OpenTelemetry meter, which idgate does not run), as are the spans an export failed to deliver."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from proxy.metrics import Metrics

_log = logging.getLogger(__name__)


class CountedExporter(SpanExporter):
    """`inner`, with what it delivered and what it failed to counted, and the queue told what left it."""

    def __init__(self, inner: SpanExporter, metrics: Metrics, left_queue: Callable[[int], None]) -> None:
        self._inner = inner
        self._exported = metrics.trace_spans_exported
        self._failed = metrics.trace_spans_dropped.labels("export_failed")
        self._left_queue = left_queue

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._left_queue(len(spans))
        try:
            result = self._inner.export(spans)
        except Exception:    # noqa: BLE001 - an exporter's bug must not end the processor's thread
            _log.exception("span export failed")
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self._exported.inc(len(spans))
        else:
            self._failed.inc(len(spans))
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class BoundedBatchProcessor(BatchSpanProcessor):
    """A BatchSpanProcessor whose queue idgate bounds (and counts the overflow of) before the SDK sees a span."""

    def __init__(self, exporter: SpanExporter, metrics: Metrics, *, max_queue_size: int,
                 schedule_delay_millis: float, max_export_batch_size: int) -> None:
        self._lock = threading.Lock()     # the loop adds, the processor's thread takes away
        self._queued = 0
        self._max_queued = max_queue_size
        self._full = metrics.trace_spans_dropped.labels("queue_full")
        super().__init__(CountedExporter(exporter, metrics, self._left), max_queue_size=max_queue_size,
                         schedule_delay_millis=schedule_delay_millis, max_export_batch_size=max_export_batch_size)

    def on_end(self, span: ReadableSpan) -> None:
        if not (span.context and span.context.trace_flags.sampled):
            return
        with self._lock:
            room = self._queued < self._max_queued
            if room:
                self._queued += 1
        if room:
            super().on_end(span)
        else:
            self._full.inc()

    def _left(self, count: int) -> None:
        with self._lock:
            self._queued -= count
