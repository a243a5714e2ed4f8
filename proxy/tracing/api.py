"""What the rest of idgate calls to trace a request, and the off switch: `Tracing` itself does nothing at
every call (no attribute is built, no span object made), so a process without a `tracing:` section pays a
method call per point of interest.  proxy.tracing.otel overrides every method with OpenTelemetry's.

A request's spans are found through a context variable (each request runs in its own task), so the
pipeline and the services mark the current request without any of them passing a span around."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Protocol

from proxy.core.headers import TrustedProxies
from proxy.core.model import AccessRequest, Decision, Identity, Surface

Attribute = str | bool | int | float | tuple[str, ...]


class Carrier(Protocol):
    """Request headers as idgate reads the trace context from them (aiohttp's CIMultiDictProxy is one)."""

    def getall(self, key: str, default: list[str], /) -> list[str]: ...


class Span:
    """One span, as a context manager: an exception leaving it marks it failed (it is never swallowed).
    This class is the no-op: the spans of a request that is not sampled, and of tracing off."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        return None

    def set(self, key: str, value: Attribute) -> None:
        """One attribute: pass only constants or values idgate computed (never a token or a claim)."""

    def answered(self, status: int) -> None:
        """The HTTP status the request was answered with (server spans)."""


NO_SPAN = Span()


class Tracing:
    """Tracing off.  `peers` are the addresses whose trace context headers (traceparent, tracestate,
    baggage, X-Amzn-Trace-Id) idgate believes and passes on: with tracing off, the trusted proxies."""

    enabled = False
    # Request headers the gRPC listener keeps for server(): none when off, so it keeps none.
    carrier_names: frozenset[bytes] = frozenset()

    def __init__(self, peers: TrustedProxies) -> None:
        self.peers = peers

    def server(self, surface: Surface, method: str, peer: str, carrier: Carrier, name: str | None = None) -> Span:
        """The request's server span (named `name`, else "<method> <surface>"), the parent of every span below
        while it is entered.  `carrier`'s trace context continues a trace only when `peer` is one of `peers`."""
        return NO_SPAN

    def span(self, name: str) -> Span:
        """A child of the current span for work idgate does itself (verify, decide, audit)."""
        return NO_SPAN

    def client(self, name: str) -> Span:
        """A child of the current span for a call idgate makes (upstream, STS, DynamoDB)."""
        return NO_SPAN

    def sampled(self) -> bool:
        """Whether the current request is sampled: only then is there a span to wrap a step in, so the
        callers skip the coroutine that would (tracing off, or a request not sampled)."""
        return False

    def admitted(self, access: AccessRequest) -> None:
        """The request as admission decided it: its HTTP attributes on the server span."""

    def identified(self, identity: Identity) -> None:
        """The verified caller: pseudonymous id (the subject only when configured), bounded roles."""

    def decided(self, decision: Decision) -> None:
        """Rule, decision and reason, on the server span and the current span."""

    def denied(self, reason: str) -> None:
        """A refusal that no decision covered (admission, a bad target): decision deny and its reason."""

    def recorded(self, seq: int | None) -> None:
        """The audit sequence number of the request's decision record."""

    def stamp(self, record: dict[str, Any]) -> None:
        """Put the request's trace_id and span_id on an audit record (nothing when off)."""

    def inject(self, headers: list[tuple[str, str]]) -> None:
        """Replace the trace context in headers idgate sends upstream with the current span's."""

    async def flush(self) -> None:
        """Export every ended span now (tests, shutdown)."""

    async def close(self) -> None:
        """Flush what can be flushed within a bounded time, then stop exporting."""
