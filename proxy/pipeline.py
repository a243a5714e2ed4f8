"""authenticate → authorize → audit: the only code that knows the order, shared by every surface.

A decision record is durable before `authorize` returns an allow, and every denial (bad token,
policy no, malformed request) is on the audit log before the client hears about it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.errors import AccessDenied, AuthenticationError, IdgateError
from proxy.metrics import Metrics
from proxy.model import AccessRequest, Decision, Identity, Surface
from proxy.policy.engine import CompiledPolicy


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Identity: ...


class AuditSink(Protocol):
    async def append(self, record: dict[str, Any]) -> None: ...
    def append_nowait(self, record: dict[str, Any]) -> None: ...


class PolicySource(Protocol):
    @property
    def current(self) -> CompiledPolicy: ...


@dataclass(frozen=True, slots=True)
class RejectedTarget:
    """What an edge knows about a request it could not turn into an AccessRequest (e.g. a path trick)."""

    surface: Surface
    request_id: str
    client_addr: str
    method: str
    host: str
    raw_path: str


# A rejected path is attacker-controlled: keep enough to investigate, not enough to flood the log.
_MAX_RAW_PATH_IN_AUDIT = 512


class Pipeline:
    def __init__(self, verifier: TokenVerifier, policy: PolicySource, audit: AuditSink, metrics: Metrics) -> None:
        self._verifier = verifier
        self._policy = policy
        self._audit = audit
        self._metrics = metrics

    async def authorize(self, request: AccessRequest, token: str | None) -> Decision:
        """Allow (audited, durable) or raise the audited denial.  DependencyError when the audit
        cannot be written: nothing may move then."""
        started = time.perf_counter()
        identity: Identity | None = None
        try:
            if token is None:
                raise AuthenticationError("a bearer token is required", reason="missing_token")
            identity = await self._verifier.verify(token)
            decision = self._policy.current.decide_http(identity, request.method, request.host, request.path)
        except IdgateError as err:
            await self._audit.append(_decision_record(request, Decision(False, None, (err.reason,), identity)))
            err.audited = True
            raise
        await self._audit.append(_decision_record(request, decision))
        self._metrics.decision_seconds.labels(request.surface.value).observe(time.perf_counter() - started)
        if not decision.allowed:
            denied = AccessDenied("the policy does not allow this request", reason=decision.reasons[0])
            denied.audited = True
            raise denied
        return decision

    async def record_rejection(self, target: RejectedTarget, err: IdgateError) -> None:
        """Audit a request refused before it reached `authorize` (bad path, bad headers, no route)."""
        await self._audit.append({
            "event": "decision",
            "request_id": target.request_id,
            "surface": target.surface.value,
            "decision": "deny",
            "rule": None,
            "reasons": [err.reason],
            "identity": None,
            "client": {"addr": target.client_addr},
            "target": {"method": target.method[:16], "host": target.host[:255], "raw_path": target.raw_path[:_MAX_RAW_PATH_IN_AUDIT]},
        })
        err.audited = True

    def record_outcome(self, request: AccessRequest, decision: Decision, *, status: int,
                       bytes_in: int, bytes_out: int, duration: float, error: str | None = None) -> None:
        """After acting: what actually happened.  Not awaited: the decision record already made the request durable."""
        record = {
            "event": "outcome",
            "request_id": request.request_id,
            "surface": request.surface.value,
            "rule": decision.rule_id,
            "status": status,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "duration_ms": round(duration * 1000, 3),
        }
        if error:
            record["error"] = error
        self._audit.append_nowait(record)


def _decision_record(request: AccessRequest, decision: Decision) -> dict[str, Any]:
    return {
        "event": "decision",
        "request_id": request.request_id,
        "surface": request.surface.value,
        "decision": "allow" if decision.allowed else "deny",
        "rule": decision.rule_id,
        "reasons": list(decision.reasons),
        "identity": decision.identity.audit_view() if decision.identity else None,
        "client": {"addr": request.client_addr},
        "target": request.audit_target(),
    }
