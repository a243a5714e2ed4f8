"""The DynamoDB gateway's services: idgate's own credentials for a gateway role, a signed call
authenticated with them, the key schemas and STS credentials a decision needs, and the call forwarded to
DynamoDB re-signed, its answer read within a bound and passed back byte for byte (x-amz-crc32 holds).

The client never holds an AWS secret: only idgate can verify what it vends, so no data touch reaches
DynamoDB without idgate's decision and audit record (DESIGN §5)."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from cachetools import LRUCache

from proxy.aws.credentials import AwsCredentials, Vended
from proxy.aws.dynamodb import calls
from proxy.aws.dynamodb.calls import CONTENT_TYPE, TARGET_PREFIX, Call, TableNamer, invalid
from proxy.aws.dynamodb.schema import KeySchemas
from proxy.aws.dynamodb.touches import KeySchema, touches
from proxy.aws.gateway_keys import KeyRing, load_key_ring
from proxy.aws.gateway_tokens import GatewaySession, SessionOpener, issue
from proxy.aws.sigv4 import Credential, SignedRequest, check_payload_hash, check_signature, parse_signed, resign
from proxy.config import GatewayConfig
from proxy.config.schema import ENV_GATEWAY_KEYS
from proxy.core.errors import (
    AuthenticationError, ConfigError, ConfigProblem, DependencyError, IdgateError, UpstreamError, UpstreamTimeout,
)
from proxy.core.model import Identity, Touch
from proxy.core.reasons import Reason
from proxy.metrics import Metrics
from proxy.policy.engine import AwsReads
from proxy.policy.session_policy import RoleChoice, SessionPolicy
from proxy.transport import http1

log = logging.getLogger("idgate.aws.gateway")

SERVICE = "dynamodb"
# The client's headers that reach DynamoDB (besides what re-signing sets): its SDK's invocation id and
# attempt count, for DynamoDB's and CloudTrail's view of retries.  Nothing else of the client's passes.
FORWARDED_HEADERS = ("amz-sdk-invocation-id", "amz-sdk-request")
# DynamoDB's answer headers that go back: what boto3 reads (request id, CRC32 of the body) and the framing.
_FORWARDABLE = re.compile(r"[\x20-\x7e]{1,256}")     # an SDK's own values; anything else stays behind
RETURNED_HEADERS = frozenset({"content-type", "content-encoding", "x-amzn-requestid", "x-amz-crc32", "x-amz-id-2"})
_CALLER_CACHE_SIZE = 4096
OFF_LOOP_BYTES = 64 * 1024          # bodies (and answers) above this are read on the gateway's thread
LARGE_CALL_WAIT = 2.0               # seconds a large call waits for that thread, then 503 gateway_busy
JOB_SWITCH_INTERVAL = 0.0005        # seconds; while that thread works, how often a waiting thread gets the GIL
T = TypeVar("T")


class Broker(Protocol):
    """The credential broker (proxy.aws.broker) as the gateway uses it."""

    async def credentials(self, identity: Identity, token: str, choice: RoleChoice,
                          policy: SessionPolicy) -> Vended: ...


@dataclass(frozen=True, slots=True)
class Caller:
    """Who holds a pair of gateway credentials: its session, the identity it carries, the secret it signs with."""

    access_key_id: str
    session: GatewaySession
    identity: Identity
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: tuple[tuple[str, str], ...]       # DynamoDB's, as received
    body: bytes
    seconds: float

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


def load_gateway_ring(config: GatewayConfig, environ: Mapping[str, str]) -> KeyRing:
    """The gateway's key ring, and what the config asks of it (ConfigError naming the source)."""
    ring = load_key_ring(config.key_file, environ)
    if config.redact_keys and ring.redaction_key is None:
        source = f"${ENV_GATEWAY_KEYS}" if environ.get(ENV_GATEWAY_KEYS) else str(config.key_file)
        raise ConfigError([ConfigProblem(source, None, "aws.gateway.redact_keys is on, but the key ring has no "
                                         "redaction_key (idgate gateway-keys makes one)")])
    return ring


def default_endpoint(region: str) -> str:
    return f"https://dynamodb.{region}.amazonaws.com"


class DynamoDbGateway:
    def __init__(self, config: GatewayConfig, region: str, ring: KeyRing, broker: Broker, pool: http1.Pool,
                 metrics: Metrics, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.region = region
        self.ring = ring
        self._broker = broker
        self._opener = SessionOpener(ring)
        self._pool = pool
        self._endpoint = config.endpoint or default_endpoint(region)
        self._origin = pool.origin(self._endpoint, max_idle=config.max_connections)
        self._hosts = frozenset(config.hosts)
        self._metrics = metrics
        self._clock = clock
        self.schemas = KeySchemas(ttl=config.key_schema_ttl)
        self._callers: LRUCache[tuple[str, str], Caller] = LRUCache(maxsize=_CALLER_CACHE_SIZE)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="idgate-dynamodb")
        self._large = asyncio.Semaphore(1)
        self.large_calls = 0                # waiting for the gateway's thread or on it (for tests and metrics)

    # --- vending ------------------------------------------------------------------------------------

    def vend(self, identity: Identity, choice: RoleChoice, policy: SessionPolicy, reads: AwsReads) -> Vended:
        """Gateway credentials for `identity` in `choice`'s role: they carry what the policy reads of the
        identity, so every call is decided afresh against the policy of the moment."""
        now = int(self._clock())
        groups, claims = reads.view(identity)
        session = GatewaySession(
            issuer=identity.issuer, subject=identity.subject, client_id=identity.client_id, groups=groups,
            claims=claims, role_arn=choice.role_arn, rule_ids=choice.rule_ids, scope_sha256=policy.sha256,
            issued_at=now, expires_at=now + self.config.credential_lifetime)
        return Vended(issue(self.ring, session), "gateway")

    # --- a call -------------------------------------------------------------------------------------

    def authenticate(self, head: SignedRequest) -> tuple[Caller, Credential]:
        """The caller of a SigV4-signed call from its head alone, or AuthenticationError: the signature's
        form, scope and time, the host it was signed for, and the credentials' seal and expiry.  Only then
        is the client asked for its body (verify_body checks the signature over it)."""
        now = self._clock()
        credential = parse_signed(head, region=self.region, service=SERVICE, now=now,
                                  max_skew=self.config.max_clock_skew)
        if self._hosts and next((v for k, v in head.headers if k.lower() == "host"), "").lower() not in self._hosts:
            raise AuthenticationError("the call was signed for another host", reason=Reason.WRONG_GATEWAY_HOST)
        key = (credential.access_key_id, credential.security_token)
        caller = self._callers.get(key)
        if caller is None or caller.session.expires_at <= now:
            session, secret = self._opener.open(credential.access_key_id, credential.security_token, now)
            caller = self._callers[key] = Caller(credential.access_key_id, session, _identity(session), secret)
        return caller, credential

    @staticmethod
    def verify_body(caller: Caller, credential: Credential, signed: SignedRequest) -> None:
        """The signature over the whole call, body included (AuthenticationError unless it holds)."""
        check_payload_hash(signed)
        check_signature(signed, credential, caller.secret)

    async def decode(self, operation: str, body: bytes, namer: TableNamer) -> Call:
        return await self._decoding(len(body), calls.decode, operation, body, namer)

    async def touches(self, call: Call, schemas: Mapping[str, KeySchema], namer: TableNamer,
                      size: int) -> tuple[Touch, ...]:
        # Straight to the thread's queue, ahead of the calls still waiting for their first turn: a decoded
        # tree (200k objects for 1.8 MB) is dropped before more of them pile up, and the collector, which
        # walks every live one, finds two or three, not one per large call in flight.
        return await self._decoding(size, touches, call, schemas, namer, decoded=True)

    async def off_loop(self, size: int, function: Callable[..., T], *args: Any, decoded: bool = False) -> T:
        """`function(*args)`, on the gateway's own thread when `size` (the body's, or the answer's) is large:
        reading 16 MB of JSON takes seconds the event loop must not lose.  One such thread, so large calls
        take turns rather than starve the loop of the GIL (or the default executor, which a policy reload
        needs); a call that cannot have it within LARGE_CALL_WAIT is answered busy (503: SDKs retry).  A
        `decoded` call had its turn already: it queues behind what is on the thread's queue (one decode at
        most, and other decoded calls' touches), never behind calls still waiting for a turn."""
        if size <= OFF_LOOP_BYTES:
            return function(*args)
        self.large_calls += 1
        try:
            if decoded:
                return await self._on_thread(function, *args)
            try:
                async with asyncio.timeout(LARGE_CALL_WAIT):
                    await self._large.acquire()
            except TimeoutError:
                raise DependencyError("the gateway is busy with other large calls; retry",
                                      reason=Reason.GATEWAY_BUSY) from None
            try:
                return await self._on_thread(function, *args)
            finally:
                self._large.release()
        finally:
            self.large_calls -= 1

    async def _on_thread(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, _in_job_mode, function, *args)

    async def _decoding(self, size: int, function: Callable[..., T], *args: Any, decoded: bool = False) -> T:
        """A decoding step; anything it fails on unexpectedly is a request idgate cannot decode (denied)."""
        try:
            return await self.off_loop(size, function, *args, decoded=decoded)
        except IdgateError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError) as exc:
            log.warning("a DynamoDB call could not be decoded", extra={"error": type(exc).__name__})
            raise invalid("the call cannot be decoded") from exc

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def upstream_credentials(self, caller: Caller, choice: RoleChoice, policy: SessionPolicy) -> AwsCredentials:
        """The STS credentials the call is re-signed with: the broker's, cached per (role, policy, caller)."""
        vended = await self._broker.credentials(caller.identity, "", choice, policy)
        return vended.credentials

    async def key_schemas(self, namer: TableNamer, tables: tuple[str, ...],
                          credentials: AwsCredentials) -> Mapping[str, KeySchema]:
        async def describe(table: str) -> tuple[int, bytes]:
            self._metrics.key_schema_fetches.inc()
            body = ('{"TableName":"%s"}' % table).encode()   # a checked table name: [A-Za-z0-9_.-]
            answer = await self.send("DescribeTable", body, (), credentials)
            return answer.status, answer.body

        return await self.schemas.get(namer.account, tables, describe)

    async def send(self, operation: str, body: bytes, client_headers: Sequence[tuple[str, str]],
                   credentials: AwsCredentials) -> Answer:
        """`operation` with `body` to DynamoDB, signed with `credentials`; its answer read whole (bounded)."""
        first: dict[str, tuple[str, str]] = {}
        for k, v in client_headers:     # the first of each (a repeat is the client's, not signed, not sent)
            if (lower := k.lower()) in FORWARDED_HEADERS and lower not in first and _FORWARDABLE.fullmatch(v):
                first[lower] = (k, v)
        forwarded = list(first.values())
        headers = resign("POST", self._endpoint + "/", [
            ("Content-Type", CONTENT_TYPE), ("X-Amz-Target", TARGET_PREFIX + operation), *forwarded],
            body, credentials, region=self.region, service=SERVICE)
        headers += [("Accept-Encoding", "identity"), ("Content-Length", str(len(body)))]
        started = time.perf_counter()
        limit = self.config.max_response_bytes
        try:
            async with self._pool.request(self._origin, "POST", "/", headers, _once(body),
                                          connect_timeout=self.config.connect_timeout,
                                          read_timeout=self.config.read_timeout) as answer:
                chunks, size = [], 0
                while chunk := await answer.read():
                    size += len(chunk)
                    if size > limit:
                        raise UpstreamError("DynamoDB's answer is larger than the gateway passes on",
                                            reason=Reason.UPSTREAM_BAD_RESPONSE)
                    chunks.append(chunk)
                kept = tuple((k, v) for k, v in answer.headers if k.lower() in RETURNED_HEADERS)
                return Answer(answer.status, kept, b"".join(chunks), time.perf_counter() - started)
        except http1.Timeout as exc:
            raise UpstreamTimeout("DynamoDB did not answer in time", reason=Reason.UPSTREAM_TIMEOUT) from exc
        except http1.BadResponse as exc:
            raise UpstreamError("DynamoDB's answer was malformed", reason=Reason.UPSTREAM_BAD_RESPONSE) from exc
        except http1.ClientError as exc:
            raise UpstreamError("DynamoDB could not be reached", reason=Reason.UPSTREAM_FAILED) from exc


class _JobMode:
    """What the interpreter does differently while any gateway thread (of any gateway in the process) is in
    a job, restored as it was once the last one leaves: no automatic garbage collection, and the GIL
    offered to waiting threads every JOB_SWITCH_INTERVAL instead of every 5 ms."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._collect = False
        self._interval = 0.0

    def enter(self) -> None:
        with self._lock:
            if self._inside == 0:
                self._collect, self._interval = gc.isenabled(), sys.getswitchinterval()
                gc.disable()
                sys.setswitchinterval(min(self._interval, JOB_SWITCH_INTERVAL))
            self._inside += 1

    def leave(self) -> None:
        with self._lock:
            self._inside -= 1
            if self._inside == 0:
                sys.setswitchinterval(self._interval)
                if self._collect:
                    gc.enable()


_JOB_MODE = _JobMode()


def _in_job_mode(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in _JobMode.  No collection: a large call's job builds a JSON tree of up to millions
    of objects with no cycle in it, and every few hundred thousand allocations triggered a full collection
    that walks the whole heap holding the GIL: measured, 4 of them (0.45 s of a 0.6 s call) for one 1.8 MB
    BatchWriteItem, 11 (2.1 s, up to 0.33 s each) behind 16 of them, while the loop, a policy reload's
    thread and every other request stood still.  Reference counting frees the tree; the loop's own cyclic
    garbage waits for the job to end.  A short switch interval: the job is pure Python that keeps the GIL
    until a waiting thread asks for it, and the loop waits again after each of its turns (it releases the
    GIL in select), so a request needing a few dozen turns waited a few dozen intervals: a 2 ms vend took
    20-160 ms behind 16 large calls, 5-20 ms with 0.5 ms."""
    _JOB_MODE.enter()
    try:
        return function(*args)
    finally:
        _JOB_MODE.leave()


def table_namer(role_arn: str, region: str) -> TableNamer:
    """Tables are the role's account's, in the gateway's region (the role ARN is checked at policy load)."""
    parts = role_arn.split(":")
    return TableNamer(partition=parts[1], region=region, account=parts[4])


def _identity(session: GatewaySession) -> Identity:
    return Identity(issuer=session.issuer, subject=session.subject, audience=(), client_id=session.client_id,
                    groups=session.groups, expires_at=float(session.expires_at),
                    claims=MappingProxyType(dict(session.claims)))


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body
