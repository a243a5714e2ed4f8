"""authenticate → authorize → audit: the only code that knows the order, shared by every surface.

A decision record is durable before `authorize` returns an allow, and every denial (bad token,
policy no, malformed request) is on the audit log before the client hears about it.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from cachetools import TLRUCache

from proxy.aws.credentials import AwsCredentials, Vended
from proxy.core import caps
from proxy.core.errors import AccessDenied, AuthenticationError, DependencyError, IdgateError
from proxy.core.reasons import Reason
from proxy.metrics import Metrics
from proxy.core.model import AccessRequest, Decision, Identity, Surface
from proxy.policy.engine import CompiledPolicy
from proxy.policy.session_policy import RoleChoice, SessionPolicy, choose_role, render_session_policy


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Identity: ...


class AuditSink(Protocol):
    async def append(self, record: dict[str, Any]) -> None: ...
    def append_nowait(self, record: dict[str, Any]) -> None: ...


class PolicySource(Protocol):
    @property
    def current(self) -> CompiledPolicy: ...


class CredentialSource(Protocol):
    """The credential broker (proxy.aws.broker) as the pipeline sees it."""

    @property
    def region(self) -> str: ...
    async def credentials(self, identity: Identity, token: str, choice: RoleChoice,
                          policy: SessionPolicy) -> Vended: ...


class RejectedTarget(NamedTuple):
    """What an edge knows about a request it could not turn into an AccessRequest (e.g. a path trick)."""

    surface: Surface
    request_id: str
    client_addr: str
    method: str
    host: str
    raw_path: str


class Pipeline:
    def __init__(self, verifier: TokenVerifier, policy: PolicySource, audit: AuditSink, metrics: Metrics) -> None:
        self._verifier = verifier
        self._policy = policy
        self._audit = audit
        self._metrics = metrics
        # The errors whose record is on the audit log: kept here, not on the error, so that no edge can
        # forget to mark one or record one twice (WeakSet: an answered error is not kept alive).
        self._recorded: weakref.WeakSet[IdgateError] = weakref.WeakSet()
        # (token, requested role) → role and session policy: one token always yields one identity, so
        # under the same compiled policy a hit skips rule matching and rendering (the credential hot path).
        self._aws_plans: TLRUCache[tuple[str, str | None], _AwsPlan] = TLRUCache(
            maxsize=_AWS_PLAN_CACHE_SIZE, ttu=lambda _key, plan, _now: plan.until, timer=time.time)

    async def authorize(self, request: AccessRequest, token: str | None) -> Decision:
        """Allow (audited, durable) or raise the audited denial.  DependencyError when the audit
        cannot be written: nothing may move then."""
        started = time.perf_counter()
        identity: Identity | None = None
        try:
            if token is None:
                raise AuthenticationError("a bearer token is required", reason=Reason.MISSING_TOKEN)
            identity = await self._verifier.verify(token)
            decision = self._policy.current.decide_http(identity, request.method, request.host, request.path)
        except IdgateError as err:
            await self._audit.append(_decision_record(request, Decision(False, None, (err.reason,), identity)))
            self._recorded.add(err)
            raise
        await self._audit.append(_decision_record(request, decision))
        self._metrics.child(self._metrics.decision_seconds, request.surface.value).observe(time.perf_counter() - started)
        if not decision.allowed:
            denied = AccessDenied("the policy does not allow this request", reason=decision.reasons[0])
            self._recorded.add(denied)
            raise denied
        return decision

    async def authorize_aws(self, request: AccessRequest, token: str | None, role: str | None,
                            broker: CredentialSource) -> tuple[Decision, AwsCredentials]:
        """Credentials for the caller (their decision record durable before they are returned), or the
        audited denial.  The matching rules' `aws` blocks give the role (`role` names one when several
        do) and the session policy; the broker turns them into STS credentials."""
        started = time.perf_counter()
        identity: Identity | None = None
        choice: RoleChoice | None = None
        policy: SessionPolicy | None = None
        try:
            if token is None:
                raise AuthenticationError("a bearer token is required", reason=Reason.MISSING_TOKEN)
            identity = await self._verifier.verify(token)
            compiled = self._policy.current
            plan = self._aws_plans.get((token, role))
            if plan is not None and plan.compiled is compiled:
                choice, policy = plan.choice, plan.policy
            else:
                choice = choose_role(compiled.rules_for_identity(identity), role)
                policy = render_session_policy(choice, identity.claims, broker.region)
                self._aws_plans[(token, role)] = _AwsPlan(compiled, choice, policy, identity.expires_at)
            vended = await broker.credentials(identity, token, choice, policy)
        except IdgateError as err:
            denied = Decision(False, choice.rule_ids[0] if choice else None, (err.reason,), identity)
            await self._audit.append(_aws_record(request, denied, role, choice, policy, None))
            self._recorded.add(err)
            raise
        assert identity is not None and choice is not None and policy is not None
        decision = Decision(True, choice.rule_ids[0], (Reason.MATCHED,), identity)
        await self._audit.append(_aws_record(request, decision, role, choice, policy, vended))
        self._metrics.child(self._metrics.decision_seconds, request.surface.value).observe(time.perf_counter() - started)
        return decision, vended.credentials

    async def refuse(self, target: RejectedTarget, err: IdgateError) -> IdgateError:
        """The error to answer a refused request with, once the refusal is on the audit log: `err` itself
        (recorded here unless the pipeline already holds its record: a denial from `authorize`, a failure
        from `record_failure`), or the DependencyError when the audit cannot be written (fail closed)."""
        if err in self._recorded:
            return err
        try:
            await self._audit.append(_rejection_record(target, err))
        except DependencyError as audit_err:
            return audit_err
        self._recorded.add(err)
        return err

    def record_outcome(self, request: AccessRequest, decision: Decision, *, status: int,
                       bytes_in: int, bytes_out: int, duration: float, error: Reason | None = None) -> None:
        """After acting: what actually happened.  Not awaited: the decision record already made the request durable."""
        record = {
            "event": "outcome",
            "request_id": caps.capped(request.request_id, caps.REQUEST_ID),
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

    def record_failure(self, request: AccessRequest, decision: Decision, failure: IdgateError, *,
                       bytes_in: int = 0, bytes_out: int = 0, duration: float = 0.0) -> None:
        """An allowed request that failed while acting (upstream down, body too large, a path idgate may
        not forward): its outcome record is the record of `failure`, which `refuse` then does not repeat."""
        self.record_outcome(request, decision, status=failure.status, bytes_in=bytes_in, bytes_out=bytes_out,
                            duration=duration, error=failure.reason)
        self._recorded.add(failure)


def _rejection_record(target: RejectedTarget, err: IdgateError) -> dict[str, Any]:
    """Every string here may be the attacker's, as received: each is capped (proxy.core.caps)."""
    return {
        "event": "decision",
        "request_id": caps.capped(target.request_id, caps.REQUEST_ID),
        "surface": target.surface.value,
        "decision": "deny",
        "rule": None,
        "reasons": [err.reason],
        "identity": None,
        "client": {"addr": caps.capped(target.client_addr, caps.CLIENT_ADDR)},
        "target": {"method": caps.capped(target.method, caps.METHOD), "host": caps.capped(target.host, caps.HOST),
                   "raw_path": caps.capped(target.raw_path, caps.PATH)},
    }


def _decision_record(request: AccessRequest, decision: Decision) -> dict[str, Any]:
    return {
        "event": "decision",
        "request_id": caps.capped(request.request_id, caps.REQUEST_ID),
        "surface": request.surface.value,
        "decision": "allow" if decision.allowed else "deny",
        "rule": decision.rule_id,
        "reasons": list(decision.reasons),
        "identity": decision.identity.audit_view() if decision.identity else None,   # verified identities only
        "client": {"addr": caps.capped(request.client_addr, caps.CLIENT_ADDR)},
        "target": request.audit_target(),
    }


_AWS_PLAN_CACHE_SIZE = 10000


@dataclass(frozen=True, slots=True)
class _AwsPlan:
    compiled: CompiledPolicy
    choice: RoleChoice
    policy: SessionPolicy
    until: float                        # the token's expiry


def _aws_record(request: AccessRequest, decision: Decision, requested_role: str | None, choice: RoleChoice | None,
                policy: SessionPolicy | None, vended: Vended | None) -> dict[str, Any]:
    """A credential decision: which role and session policy (by hash), and for a vend the access key id and
    expiry.  Never the secret or the session token."""
    record = _decision_record(request, decision)
    record["target"]["role"] = caps.capped_optional(requested_role, caps.ROLE)
    aws: dict[str, Any] = {}
    if choice is not None:
        aws.update(role_arn=choice.role_arn, rules=list(choice.rule_ids), web_identity=choice.web_identity)
    if policy is not None:
        aws["session_policy_sha256"] = policy.sha256
    if vended is not None:
        aws.update(access_key_id=vended.credentials.access_key_id,
                   expiration=vended.credentials.expiration_iso(), source=vended.source)
    jti = decision.identity.claims.get("jti") if decision.identity else None
    if isinstance(jti, str):
        aws["token_jti"] = caps.capped(jti, caps.JTI)   # which token obtained these credentials (an id, not the token)
    record["aws"] = aws
    return record
