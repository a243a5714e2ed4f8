"""authenticate → authorize → audit: the only code that knows the order, shared by every surface.

A decision record is durable before `authorize` returns an allow, and every denial (bad token,
policy no, malformed request) is on the audit log before the client hears about it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from cachetools import TLRUCache

from proxy.aws import gateway_records
from proxy.aws.credentials import AwsCredentials, Vended
from proxy.aws.dynamodb import calls
from proxy.aws.dynamodb.touches import KeySchema
from proxy.aws.dynamodb.calls import TableNamer
from proxy.aws.gateway import Caller, DynamoDbGateway, table_namer
from proxy.aws.sigv4 import SignedRequest
from proxy.core import caps
from proxy.core.errors import AccessDenied, AuthenticationError, DependencyError, IdgateError
from proxy.core.reasons import Reason
from proxy.metrics import Metrics
from proxy.core.model import AccessRequest, Decision, Identity, Surface, Touch
from proxy.policy.dynamodb import TableGrant, TouchVerdict, authorize as authorize_touches, table_grants
from proxy.policy.engine import CompiledPolicy
from proxy.sessions.manager import SessionIdentity, Sessions
from proxy.policy.session_policy import RoleChoice, SessionPolicy, choose_role, render_session_policy
from proxy.tracing import NO_TRACING, SpanName, Tracing


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Identity: ...


class AuditSink(Protocol):
    async def append(self, record: dict[str, Any]) -> int: ...     # the record's seq, once durable
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


class SessionCookie(NamedTuple):
    """A browser's session cookie, as admission found it: the credential when no bearer token is given."""

    value: str
    # Another site made the browser send a request that can change something (a method other than GET, HEAD
    # or OPTIONS, or a WebSocket handshake, which is a GET that opens a two-way channel): CSRF, or
    # cross-site WebSocket hijacking, when the cookie is its only credential.
    cross_site_change: bool


class RejectedTarget(NamedTuple):
    """What an edge knows about a request it could not turn into an AccessRequest (e.g. a path trick)."""

    surface: Surface
    request_id: str
    client_addr: str
    method: str
    host: str
    raw_path: str


class Pipeline:
    def __init__(self, verifier: TokenVerifier, policy: PolicySource, audit: AuditSink, metrics: Metrics,
                 tracing: Tracing = NO_TRACING, sessions: Sessions | None = None) -> None:
        self._verifier = verifier
        self._sessions = sessions
        self._policy = policy
        self._audit = audit
        self._metrics = metrics
        self._tracing = tracing
        # Append a decision record and wait until it is durable: with tracing off, the audit's own append,
        # so that off adds not even a call to the request's path.
        self._durable: Callable[[dict[str, Any]], Awaitable[object]] = \
            self._stamped_durable if tracing.enabled else audit.append
        # The errors whose record is on the audit log: kept here, not on the error, so that no edge can
        # forget to mark one or record one twice (WeakSet: an answered error is not kept alive).
        self._recorded: weakref.WeakSet[IdgateError] = weakref.WeakSet()
        # (token, requested role) → role and session policy: one token always yields one identity, so
        # under the same compiled policy a hit skips rule matching and rendering (the credential hot path).
        self._aws_plans: TLRUCache[tuple[str, str | None], _AwsPlan] = TLRUCache(
            maxsize=_AWS_PLAN_CACHE_SIZE, ttu=lambda _key, plan, _now: plan.until, timer=time.time)
        # Gateway access key id → its plan: the key is random per vend and sealed with the identity it
        # stands for (the session token's associated data), so one key always means one identity.
        self._gateway_plans: TLRUCache[str, _Compiled] = TLRUCache(
            maxsize=_AWS_PLAN_CACHE_SIZE, ttu=lambda _key, entry, _now: entry.until, timer=time.time)

    async def authorize(self, request: AccessRequest, token: str | None,
                        session: SessionCookie | None = None) -> Decision:
        """Allow (audited, durable) or raise the audited denial.  DependencyError when the audit
        cannot be written: nothing may move then.  A bearer token wins over a session cookie."""
        started = time.perf_counter()
        tracing = self._tracing
        identity: Identity | None = None
        held: SessionIdentity | None = None
        try:
            if token is not None:
                identity = await self._verifier.verify(token)
            elif session is not None and self._sessions is not None:
                held = await self._session_identity(request, session)
                identity = held.identity
            else:
                raise AuthenticationError("a bearer token is required", reason=Reason.MISSING_TOKEN)
            tracing.identified(identity)
            if held is not None and session is not None and session.cross_site_change:
                # The cookie rides along on any request the browser makes, whoever made it make it (CSRF).
                raise AccessDenied("a cross-site request cannot change anything with the session cookie",
                                   reason=Reason.CROSS_SITE_REQUEST)
            with tracing.span(SpanName.AUTHORIZE):
                decision = self._policy.current.decide_http(identity, request.method, request.host, request.path)
                tracing.decided(decision)
        except IdgateError as err:
            await self._durable(_decision_record(request, self._denial(None, err, identity), held))
            self._recorded.add(err)
            raise
        await self._durable(_decision_record(request, decision, held))
        self._metrics.child(self._metrics.decision_seconds, request.surface.value).observe(time.perf_counter() - started)
        if not decision.allowed:
            denied = AccessDenied("the policy does not allow this request", reason=decision.reasons[0])
            self._recorded.add(denied)
            raise denied
        return decision

    async def authorize_aws(self, request: AccessRequest, token: str | None, role: str | None,
                            broker: CredentialSource, gateway: DynamoDbGateway | None = None
                            ) -> tuple[Decision, AwsCredentials]:
        """Credentials for the caller (their decision record durable before they are returned), or the
        audited denial.  The matching rules' `aws` blocks give the role (`role` names one when several
        do) and the session policy; the broker turns them into STS credentials."""
        started = time.perf_counter()
        tracing = self._tracing
        identity: Identity | None = None
        choice: RoleChoice | None = None
        policy: SessionPolicy | None = None
        try:
            if token is None:
                raise AuthenticationError("a bearer token is required", reason=Reason.MISSING_TOKEN)
            identity = await self._verifier.verify(token)
            tracing.identified(identity)
            with tracing.span(SpanName.AUTHORIZE):
                compiled = self._policy.current
                plan = self._aws_plans.get((token, role))
                if plan is not None and plan.compiled is compiled:
                    choice, policy = plan.choice, plan.policy
                else:
                    choice = choose_role(compiled.rules_for_identity(identity), role)
                    policy = render_session_policy(choice, identity.claims, broker.region)
                    self._aws_plans[(token, role)] = _AwsPlan(compiled, choice, policy, identity.expires_at)
            if choice.gateway:
                if gateway is None:
                    raise DependencyError("this role is served through the DynamoDB gateway, which is not enabled",
                                          reason=Reason.BROKER_UNAVAILABLE)
                vended = gateway.vend(identity, choice, policy, compiled.aws_reads)
            else:
                with tracing.client(SpanName.STS) as span:
                    vended = await broker.credentials(identity, token, choice, policy)
                    span.set("idgate.credentials.source", vended.source)
        except IdgateError as err:
            denied = self._denial(choice.rule_ids[0] if choice else None, err, identity)
            await self._durable(_aws_record(request, denied, role, choice, policy, None))
            self._recorded.add(err)
            raise
        assert identity is not None and choice is not None and policy is not None
        decision = Decision(True, choice.rule_ids[0], (Reason.MATCHED,), identity)
        tracing.decided(decision)
        await self._durable(_aws_record(request, decision, role, choice, policy, vended))
        self._metrics.child(self._metrics.decision_seconds, request.surface.value).observe(time.perf_counter() - started)
        return decision, vended.credentials

    async def authorize_dynamodb(self, request: AccessRequest, head: SignedRequest,
                                 read_body: Callable[[], Awaitable[bytes]], gateway: DynamoDbGateway) -> GatewayCall:
        """A DynamoDB call through the gateway: its caller from the signed head (the body is read only
        after that, with `read_body`), the signature over the body, every touch decoded and authorized
        against the policy of the moment, and the decision record durable before the call may be
        forwarded; or the audited denial."""
        started = time.perf_counter()
        tracing = self._tracing
        draft = _GatewayDraft(target=next((v for k, v in head.headers if k.lower() == "x-amz-target"), ""))
        try:
            with tracing.span(SpanName.AUTHENTICATE):
                caller, credential = gateway.authenticate(head)
            draft.caller = caller
            tracing.identified(caller.identity)
            body = draft.body = await read_body()
            signed = dataclasses.replace(head, body=body)
            with tracing.span(SpanName.AUTHENTICATE):
                gateway.verify_body(caller, credential, signed)
            with tracing.span(SpanName.AUTHORIZE):
                operation = calls.operation(draft.target)
                plan = self._gateway_plan(caller, gateway.region)
                draft.choice, draft.policy = plan.choice, plan.policy
                choice, policy, grants, namer = plan
                call = draft.call = await gateway.decode(operation, body, namer)
                if not all(any(g.table == table for g in grants) for table in call.tables):
                    # Before DescribeTable: a table no rule names is denied without idgate touching it.
                    raise AccessDenied("no rule grants access to this table", reason=Reason.ACTION_NOT_GRANTED)
                with tracing.client(SpanName.STS):
                    credentials = await gateway.upstream_credentials(caller, choice, policy)
                with tracing.client(SpanName.KEY_SCHEMA):
                    schemas = await gateway.key_schemas(namer, call.tables, credentials)
                touches = draft.touches = await gateway.touches(call, schemas, namer, len(body))
                verdict = draft.verdict = authorize_touches(touches, grants)
                if not verdict.allowed:
                    raise AccessDenied("the policy does not allow this call", reason=verdict.reason)
        except IdgateError as err:
            identity = draft.caller.identity if draft.caller else None
            denied = self._denial(draft.choice.rule_ids[0] if draft.choice else None, err, identity)
            await self._durable(self._gateway_record(request, denied, draft, gateway))
            self._recorded.add(err)
            raise
        decision = Decision(True, verdict.rules[0], (Reason.MATCHED,), caller.identity)
        tracing.decided(decision)
        await self._durable(self._gateway_record(request, decision, draft, gateway))
        self._metrics.child(self._metrics.decision_seconds, request.surface.value).observe(time.perf_counter() - started)
        return GatewayCall(decision, caller, call, body, head.headers, credentials, schemas, gateway_records.KeyRedactor(
            gateway.ring.redaction_key if gateway.config.redact_keys else None))

    async def _session_identity(self, request: AccessRequest, session: SessionCookie) -> SessionIdentity:
        assert self._sessions is not None
        try:
            held = await self._sessions.authenticate(session.value)
        except AuthenticationError as err:
            if err.reason in (Reason.SESSION_EXPIRED, Reason.SESSION_REVOKED):
                key = self._sessions.session_key(session.value)
                self._audit.append_nowait(_session_record(request, _ended(err.reason), None, key))
            raise
        if held.refreshed:
            self._audit.append_nowait(_session_record(request, "refresh", held.identity, held.key))
        return held

    async def record_session(self, request: AccessRequest, action: str, identity: Identity | None,
                             key: str | None, *, logout: dict[str, Any] | None = None) -> None:
        """A login, logout or back-channel logout (`logout`: what its token named and how many sessions
        ended), durable before the browser or the issuer hears of it."""
        record = _session_record(request, action, identity, key)
        if logout is not None:
            record["logout"] = {k: caps.capped_optional(v, caps.CLAIM) if isinstance(v, str) or v is None else v
                                for k, v in logout.items()}
        await self._durable(record)

    def _denial(self, rule_id: str | None, err: IdgateError, identity: Identity | None) -> Decision:
        denied = Decision(False, rule_id, (err.reason,), identity)
        self._tracing.decided(denied)
        return denied

    def _stamped_durable(self, record: dict[str, Any]) -> Awaitable[object]:
        """_durable with tracing on: the record stamped; when the request is sampled, its seq and the fsync
        wait on the trace too.  A request not sampled (nearly all of them) awaits the audit's own append,
        without a coroutine around it."""
        tracing = self._tracing
        tracing.stamp(record)
        return self._traced_append(record) if tracing.sampled() else self._audit.append(record)

    async def _traced_append(self, record: dict[str, Any]) -> None:
        tracing = self._tracing
        with tracing.span(SpanName.AUDIT_APPEND):
            tracing.recorded(await self._audit.append(record))

    def _gateway_plan(self, caller: Caller, region: str) -> _GatewayPlan:
        """The role, session policy and grants of gateway credentials under the policy of the moment: a rule
        changed or removed since the vend applies at once (a reload compiles a new policy, and a plan is
        only reused under the compiled policy it was made with)."""
        compiled = self._policy.current
        plan = self._gateway_plans.get(caller.access_key_id)
        if plan is not None and plan.compiled is compiled:
            return plan.plan
        choice = choose_role(compiled.rules_for_identity(caller.identity), caller.session.role_arn)
        if not choice.gateway:
            raise AccessDenied("the credentials' role is no longer granted in gateway mode",
                               reason=Reason.NOT_GATEWAY_ROLE)
        made = _GatewayPlan(choice, render_session_policy(choice, caller.identity.claims, region),
                            table_grants(choice, caller.identity.claims), table_namer(choice.role_arn, region))
        self._gateway_plans[caller.access_key_id] = _Compiled(compiled, made, float(caller.session.expires_at))
        return made

    def _gateway_record(self, request: AccessRequest, decision: Decision, draft: _GatewayDraft,
                        gateway: DynamoDbGateway) -> dict[str, Any]:
        record = _decision_record(request, decision)
        view: dict[str, Any] = {"operation": caps.capped(draft.target.removeprefix(calls.TARGET_PREFIX), caps.METHOD * 4)}
        if draft.body is not None:
            redaction_key = gateway.ring.redaction_key if gateway.config.redact_keys else None
            if redaction_key is None:
                view["body_sha256"] = hashlib.sha256(draft.body).hexdigest()
            else:   # keyed too: SDK bodies are predictable, so a plain digest would confirm a guessed key
                view["body_hmac_sha256"] = hmac.new(redaction_key, draft.body, hashlib.sha256).hexdigest()
        if draft.caller is not None:
            session = draft.caller.session
            view.update(access_key_id=draft.caller.access_key_id, key_id=session.key_id,
                        credential_rules=list(session.rule_ids), issued_at=session.issued_at)
        if draft.choice is not None:
            view.update(role_arn=draft.choice.role_arn, rules=list(draft.choice.rule_ids))
        if draft.policy is not None and draft.caller is not None:
            # The scope the credentials were vended for, against the one this call was decided on.
            view["scope_changed"] = draft.policy.sha256 != draft.caller.session.scope_sha256
        if draft.call is not None:
            view["tables"] = caps.capped_list(draft.call.tables, gateway_records.MAX_TOUCHES, caps.HOST)
        if draft.touches:
            redact = gateway_records.KeyRedactor(gateway.ring.redaction_key if gateway.config.redact_keys else None)
            rules = draft.verdict.rules if draft.verdict else (None,) * len(draft.touches)
            view["touches"] = gateway_records.touches_view(draft.touches, rules, redact)
            if draft.verdict is not None and draft.verdict.denied is not None:
                denied = draft.verdict.denied      # named in full even when the list of touches is cut short
                view["denied_touch"] = denied
                view["denied"] = gateway_records.touch_view(draft.touches[denied], None, redact)
        record["dynamodb"] = view
        return record

    def record_dynamodb_outcome(self, request: AccessRequest, call: GatewayCall, view: dict[str, Any], *,
                                bytes_in: int, bytes_out: int, duration: float, error: Reason | None = None) -> None:
        """The second record of a forwarded call: what DynamoDB answered (proxy.aws.gateway_records)."""
        record = {
            "event": "outcome",
            "request_id": caps.capped(request.request_id, caps.REQUEST_ID),
            "surface": request.surface.value,
            "rule": call.decision.rule_id,
            "status": view["status"],
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "duration_ms": round(duration * 1000, 3),
            "dynamodb": {"operation": call.call.operation, **view},
        }
        if error:
            record["error"] = error
        self._tracing.stamp(record)
        self._audit.append_nowait(record)

    async def refuse(self, target: RejectedTarget, err: IdgateError) -> IdgateError:
        """The error to answer a refused request with, once the refusal is on the audit log: `err` itself
        (recorded here unless the pipeline already holds its record: a denial from `authorize`, a failure
        from `record_failure`), or the DependencyError when the audit cannot be written (fail closed)."""
        if err in self._recorded:
            return err
        self._tracing.denied(err.reason)
        try:
            await self._durable(_rejection_record(target, err))
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
        self._tracing.stamp(record)
        self._audit.append_nowait(record)

    def record_failure(self, request: AccessRequest, decision: Decision, failure: IdgateError, *,
                       bytes_in: int = 0, bytes_out: int = 0, duration: float = 0.0) -> None:
        """An allowed request that failed while acting (upstream down, body too large, a path idgate may
        not forward): its outcome record is the record of `failure`, which `refuse` then does not repeat."""
        self.record_outcome(request, decision, status=failure.status, bytes_in=bytes_in, bytes_out=bytes_out,
                            duration=duration, error=failure.reason)
        self._recorded.add(failure)


def _ended(reason: Reason) -> str:
    return "expired" if reason is Reason.SESSION_EXPIRED else "revoked"


def _session_record(request: AccessRequest, action: str, identity: Identity | None, key: str | None) -> dict[str, Any]:
    """A session's life: login, refresh, logout, backchannel_logout, expired, revoked."""
    return {
        "event": "session",
        "action": action,
        "request_id": caps.capped(request.request_id, caps.REQUEST_ID),
        "surface": request.surface.value,
        "session": key[:32] if key else None,
        "identity": identity.audit_view() if identity else None,
        "client": {"addr": caps.capped(request.client_addr, caps.CLIENT_ADDR)},
    }


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


def _decision_record(request: AccessRequest, decision: Decision,
                     session: SessionIdentity | None = None) -> dict[str, Any]:
    record = {
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
    if session is not None:
        record["session"] = session.audit_id     # a hash of the session id: which session, never the cookie
    return record


_AWS_PLAN_CACHE_SIZE = 10000


class _GatewayPlan(NamedTuple):
    choice: RoleChoice
    policy: SessionPolicy
    grants: tuple[TableGrant, ...]
    namer: TableNamer


@dataclass(frozen=True, slots=True)
class _Compiled:
    compiled: CompiledPolicy               # the policy the plan was made under
    plan: _GatewayPlan
    until: float                           # the credentials' expiry


@dataclass(slots=True)
class _GatewayDraft:
    """What is known of a gateway call so far: its denial record holds as much of it as was reached."""

    target: str
    caller: Caller | None = None
    body: bytes | None = None
    choice: RoleChoice | None = None
    policy: SessionPolicy | None = None
    call: calls.Call | None = None
    touches: tuple[Touch, ...] = ()
    verdict: TouchVerdict | None = None


@dataclass(frozen=True, slots=True)
class GatewayCall:
    """An allowed gateway call, its decision record durable: what forwarding it needs."""

    decision: Decision
    caller: Caller
    call: calls.Call
    body: bytes                            # as received and signed: what is forwarded
    client_headers: Sequence[tuple[str, str]]   # the client's head (an allow-list of it is forwarded)
    credentials: AwsCredentials            # the broker's STS credentials to re-sign with
    schemas: Mapping[str, KeySchema]
    redact: gateway_records.KeyRedactor


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
        # The tables the credentials reach: `audit query --table` finds a vend by them (broker credentials
        # then go to DynamoDB directly, so the vend is all the audit holds of what they touch).
        aws.update(role_arn=choice.role_arn, rules=list(choice.rule_ids), web_identity=choice.web_identity,
                   tables=list(dict.fromkeys(grant.table for grant in choice.dynamodb)))
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
