"""Prometheus collectors for one idgate process, on their own registry so tests and several
apps in one process never collide.  A leaf module: it imports nothing from idgate."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "idgate_requests_total", "Requests answered, by surface, decision and HTTP status.",
            ["surface", "decision", "status"], registry=r)
        self.decision_seconds = Histogram(
            "idgate_decision_seconds", "Time to authenticate, authorize and durably audit a request.",
            ["surface"], buckets=_LATENCY_BUCKETS, registry=r)
        self.token_cache = Counter(
            "idgate_token_cache_total", "Verified-token cache lookups.", ["result"], registry=r)
        self.jwks_fetches = Counter(
            "idgate_jwks_fetches_total", "JWKS / discovery fetches by issuer and result.",
            ["issuer", "result"], registry=r)
        self.jwks_keys = Gauge(
            "idgate_jwks_keys", "Signing keys currently held per issuer.", ["issuer"], registry=r)
        self.audit_append_seconds = Histogram(
            "idgate_audit_append_seconds", "Time from audit append to durable (fsynced) record.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.audit_failures = Counter(
            "idgate_audit_failures_total", "Audit records that could not be made durable.", registry=r)
        self.audit_bytes_written = Counter(
            "idgate_audit_bytes_written_total", "Bytes of audit records written to the audit log (made durable "
            "when fsync is on).", registry=r)
        self.audit_free_bytes = Gauge(
            "idgate_audit_free_bytes", "Bytes available on the audit log's filesystem, read at scrape time "
            "(NaN when it cannot be read).", registry=r)
        self.audit_segments_deleted = Counter(
            "idgate_audit_segments_deleted_total", "Rotated audit segments deleted by retention "
            "(audit.max_segments, audit.max_bytes).", registry=r)
        self.audit_batch_records = Histogram(
            "idgate_audit_batch_records", "Records made durable per fsync (group commit).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.upstream_seconds = Histogram(
            "idgate_upstream_seconds", "Time to the upstream's response head, by route.",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.policy_reloads = Counter(
            "idgate_policy_reloads_total", "Policy reload attempts by result.", ["result"], registry=r)
        self.sts_calls = Counter(
            "idgate_sts_calls_total", "STS AssumeRole* calls by result (ok or the denial reason).",
            ["result"], registry=r)
        self.credentials_vended = Counter(
            "idgate_credentials_vended_total", "Credential sets vended, by source (cache, sts, stale).",
            ["source"], registry=r)
        self.grpc_refused = Counter(
            "idgate_grpc_refused_total", "gRPC ext_authz connections refused at connect (untrusted peer, connection "
            "caps) or closed for misbehaving (rapid reset, floods, deadlines), by reason.", ["reason"], registry=r)
        self.upstream_busy = Counter(
            "idgate_upstream_busy_total", "Requests answered 503 because the route's upstream connections were all "
            "in use for its pool_timeout, by route.", ["route"], registry=r)
        self.http_refused = Counter(
            "idgate_http_refused_total", "HTTP connections and requests refused before any handler: connection "
            "caps, request heads too large or too slow, and what the HTTP parser refused, by listener and reason.",
            ["listener", "reason"], registry=r)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, memoized: prometheus-client's own lookup takes a lock and builds
        a tuple each time, a measurable share of a request on the hot path."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found
