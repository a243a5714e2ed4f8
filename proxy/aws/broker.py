"""The credential broker: STS credentials cached per (role, session policy, caller), refreshed ahead of
botocore's windows, one STS call per key however many callers ask at once, throttling backed off with
jitter, and a failed refresh that keeps serving credentials still comfortably valid.

Lifetimes (seconds left on a cached set):   ≥ 2400 serve  |  1800..2400 serve and refresh in the background
|  < 1800 fetch before answering  |  a failed fetch still serves a set with ≥ 960 left (botocore refreshes
below 900 and blocks below 600).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from cachetools import TLRUCache

from proxy.aws.credentials import AwsCredentials, Vended
from proxy.aws.flights import Flights
from proxy.aws.naming import check_request, session_identity
from proxy.aws.sts import STS_THREADS, AssumeRequest, Sts, StsClientFactory, StsThrottled, boto3_sts_client
from proxy.config import AwsConfig
from proxy.core.errors import DependencyError, IdgateError
from proxy.core.reasons import Reason
from proxy.metrics import Metrics
from proxy.core.model import Identity
from proxy.policy.session_policy import RoleChoice, SessionPolicy

log = logging.getLogger("idgate.aws.broker")

VEND_MIN_REMAINING = 1800.0       # DESIGN §5: vend credentials that live at least 30 minutes
REFRESH_AHEAD = 2400.0            # below this, refresh in the background while still serving
FALLBACK_MIN_REMAINING = 960.0    # after a failed refresh, serve only above botocore's 15-minute window
FAILED_REFRESH_PAUSE = 30.0       # no new background refresh for ~this long after one failed (jittered)
THROTTLE_ATTEMPTS = 4
BACKOFF_BASE, BACKOFF_CAP = 0.1, 1.0

CacheKey = tuple[str, str, str, str, str]  # role ARN, session policy SHA-256, issuer, subject, web-identity token hash


class Assumer(Protocol):
    async def assume(self, request: AssumeRequest) -> AwsCredentials: ...


@dataclass(slots=True)
class _Entry:
    credentials: AwsCredentials
    refresh_not_before: float = 0.0


class CredentialBroker:
    def __init__(self, config: AwsConfig, sts: Assumer, *, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 jitter: Callable[[], float] = random.random) -> None:
        self.config = config
        self._sts = sts
        self._metrics = metrics or Metrics()
        self._vended = {source: self._metrics.credentials_vended.labels(source) for source in ("cache", "sts", "stale")}
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._cache: TLRUCache[CacheKey, _Entry] = TLRUCache(
            maxsize=config.credential_cache_size, ttu=self._usable_until, timer=clock)
        self._flights: Flights[CacheKey, AwsCredentials] = Flights("sts-assume-role")
        self.sts_calls = 0                # attempts made, for tests and the benchmark

    @property
    def region(self) -> str:
        return self.config.region

    @staticmethod
    def _usable_until(_key: CacheKey, entry: _Entry, _now: float) -> float:
        return entry.credentials.expiration - FALLBACK_MIN_REMAINING

    async def credentials(self, identity: Identity, token: str, choice: RoleChoice,
                          policy: SessionPolicy) -> Vended:
        """Credentials for `identity` in `choice`'s role, scoped by `policy`; IdgateError when none can be had."""
        vended = await self._credentials(identity, token, choice, policy)
        self._vended[vended.source].inc()
        return vended

    async def _credentials(self, identity: Identity, token: str, choice: RoleChoice,
                           policy: SessionPolicy) -> Vended:
        # With AssumeRoleWithWebIdentity, STS's trust policy judges the caller's own token (aud, azp,
        # amr...): credentials one token earned are never handed to another token of the same subject.
        token_key = hashlib.sha256(token.encode()).hexdigest() if choice.web_identity else ""
        key = (choice.role_arn, policy.sha256, identity.issuer, identity.subject, token_key)
        entry = self._cache.get(key)
        now = self._clock()
        if entry is not None:
            remaining = entry.credentials.remaining(now)
            if remaining >= REFRESH_AHEAD:
                return Vended(entry.credentials, "cache")     # the hot path: no STS request is even built
            if remaining >= VEND_MIN_REMAINING:
                if now >= entry.refresh_not_before and key not in self._flights:
                    self._flight(key, self._request(identity, token, choice, policy))   # a background refresh
                return Vended(entry.credentials, "cache")
        try:
            task = self._flight(key, self._request(identity, token, choice, policy))
            return Vended(await asyncio.shield(task), "sts")
        except IdgateError:
            entry = self._cache.get(key)
            if entry is not None and entry.credentials.remaining(self._clock()) >= FALLBACK_MIN_REMAINING:
                log.warning("STS refresh failed; serving cached credentials that are still valid",
                            extra={"role_arn": choice.role_arn})
                return Vended(entry.credentials, "stale")
            raise

    async def close(self) -> None:
        """Stop every STS call in flight (their threads finish on their own; nobody awaits them)."""
        await self._flights.cancel()

    async def idle(self) -> None:
        """Wait for every STS call in flight, background refreshes included (for tests)."""
        await self._flights.wait()

    def _flight(self, key: CacheKey, request: AssumeRequest) -> asyncio.Task[AwsCredentials]:
        """The one STS fetch for `key`, started if none is running (single flight)."""
        return self._flights.start(key, lambda: self._fetch(key, request))

    def _request(self, identity: Identity, token: str, choice: RoleChoice, policy: SessionPolicy) -> AssumeRequest:
        who = session_identity(identity.issuer, identity.subject, tags=self.config.session_tags)
        duration = choice.duration or self.config.default_duration
        check_request(who, policy.document, duration)
        return AssumeRequest(role_arn=choice.role_arn, policy=policy.document, duration=duration, who=who,
                             web_identity_token=token if choice.web_identity else None)

    async def _fetch(self, key: CacheKey, request: AssumeRequest) -> AwsCredentials:
        try:
            credentials = await self._assume_with_backoff(request)
            remaining = credentials.remaining(self._clock())
            if remaining <= 0:
                raise DependencyError("STS answered with credentials that have already expired",
                                      reason=Reason.STS_EXPIRED_CREDENTIALS)
            if remaining < VEND_MIN_REMAINING:
                raise DependencyError("STS answered with credentials too short-lived to vend",
                                      reason=Reason.STS_SHORT_LIVED)
        except IdgateError:
            entry = self._cache.get(key)
            if entry is not None:
                entry.refresh_not_before = self._clock() + FAILED_REFRESH_PAUSE * (0.5 + self._jitter())
            raise
        self._cache[key] = _Entry(credentials)
        return credentials

    async def _assume_with_backoff(self, request: AssumeRequest) -> AwsCredentials:
        for attempt in range(THROTTLE_ATTEMPTS):
            self.sts_calls += 1
            try:
                credentials = await self._sts.assume(request)
            except StsThrottled as err:
                self._metrics.sts_calls.labels(err.reason).inc()
                if attempt == THROTTLE_ATTEMPTS - 1:
                    raise
            except IdgateError as err:
                self._metrics.sts_calls.labels(err.reason).inc()
                raise
            else:
                self._metrics.sts_calls.labels("ok").inc()
                return credentials
            # Full jitter: callers throttled together spread out instead of retrying in step.
            await self._sleep(self._jitter() * min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt))
        raise AssertionError("unreachable")


def start_broker(config: AwsConfig, metrics: Metrics,
                 client_factory: StsClientFactory | None = None) -> tuple[CredentialBroker, ThreadPoolExecutor]:
    """A broker with its own STS thread pool (the caller shuts the pool down)."""
    executor = ThreadPoolExecutor(max_workers=STS_THREADS, thread_name_prefix="idgate-sts")
    client = (client_factory or boto3_sts_client)(config)
    return CredentialBroker(config, Sts(client, executor), metrics=metrics), executor
