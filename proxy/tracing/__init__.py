"""Optional OpenTelemetry tracing: one server span per request on every surface, child spans for what idgate
does on its way (verify, decide, audit, act), the caller (pseudonymous), rule and decision on the spans, and
the trace and span ids on every audit record.  Off unless configured (`Tracing`: every call a no-op); the
OpenTelemetry packages (the `otel` extra) are imported only when it is on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.config import TracingConfig
from proxy.core.headers import TrustedProxies
from proxy.metrics import Metrics
from proxy.tracing.api import NO_SPAN, Carrier, Span, Tracing
from proxy.tracing.names import SpanName

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["NO_SPAN", "NO_TRACING", "Carrier", "Span", "SpanName", "Tracing", "start_tracing"]

NO_TRACING = Tracing(TrustedProxies(()))


def start_tracing(config: TracingConfig | None, trusted_proxies: TrustedProxies, metrics: Metrics, *,
                  exporter: SpanExporter | None = None) -> Tracing:
    """The process's tracing: off without a (enabled) `tracing:` section.  `exporter` replaces the OTLP
    exporter (an OpenTelemetry SpanExporter: tests use the SDK's in-memory one)."""
    if config is None or not config.enabled:
        return Tracing(trusted_proxies)
    from proxy.tracing.otel import OtelTracing   # the otel extra: only now
    peers = trusted_proxies if config.trusted_peers is None else TrustedProxies(config.trusted_peers)
    key = config.pseudonym_key_file.read_bytes() if config.pseudonym_key_file is not None else None
    return OtelTracing(config, peers, metrics, exporter=exporter, pseudonym_key=key)
