"""The broker's cache against an injected STS (the seam of STYLE habit 9) and an injected clock: refresh
ahead of botocore's windows, single flight, jittered backoff on throttling, stale-but-valid on failure."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from proxy.aws.broker import (
    FALLBACK_MIN_REMAINING,
    REFRESH_AHEAD,
    THROTTLE_ATTEMPTS,
    VEND_MIN_REMAINING,
    CredentialBroker,
)
from proxy.aws.credentials import AwsCredentials
from proxy.aws.sts import AssumeRequest, StsThrottled
from proxy.config import AwsConfig
from proxy.core.errors import AccessDenied, DependencyError, IdgateError
from proxy.policy.rules import AwsGrant, DynamoDbGrant, Rule, Who
from proxy.policy.session_policy import RoleChoice, choose_role, render_session_policy
from tests.factories import make_identity


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeSts:
    """Answers AssumeRole from a script: a float = lifetime of the credentials it returns, an exception
    = raised.  `gate`, when set, holds every call until released."""

    clock: Clock
    script: list[float | IdgateError] = field(default_factory=list)
    calls: list[AssumeRequest] = field(default_factory=list)
    gate: asyncio.Event | None = None
    called: asyncio.Event = field(default_factory=asyncio.Event)

    async def until_calls(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.calls) < count:
                self.called.clear()
                await self.called.wait()

    async def assume(self, request: AssumeRequest) -> AwsCredentials:
        self.calls.append(request)
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        step = self.script.pop(0) if self.script else 3600.0
        if isinstance(step, IdgateError):
            raise step
        n = len(self.calls)
        return AwsCredentials(f"ASIA{n:016d}", f"secret-{n}", f"token-{n}", self.clock() + step)


def choice(web_identity: bool = False) -> RoleChoice:
    grant = AwsGrant(role_arn="arn:aws:iam::123456789012:role/etl", web_identity=web_identity,
                     dynamodb=(DynamoDbGrant(table="orders", actions=("GetItem",)),))
    return choose_role([Rule(id="r", who=Who(any=True), aws=grant)], None)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sleeps() -> list[float]:
    return []


def make_broker(clock: Clock, sts: FakeSts, sleeps: list[float]) -> CredentialBroker:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return CredentialBroker(AwsConfig(), sts, clock=clock, sleep=sleep, jitter=lambda: 0.5)


async def vend(broker: CredentialBroker, subject: str = "svc-etl-7", *, web_identity: bool = False,
               token: str = "the-token") -> tuple[AwsCredentials, str]:
    role = choice(web_identity)
    identity = make_identity(subject)
    vended = await broker.credentials(identity, token, role, render_session_policy(role, identity.claims, "us-east-1"))
    return vended.credentials, vended.source


async def test_a_second_request_is_a_cache_hit(clock: Clock, sleeps: list[float]) -> None:
    sts = FakeSts(clock)
    broker = make_broker(clock, sts, sleeps)
    first, source1 = await vend(broker)
    second, source2 = await vend(broker)
    assert (source1, source2) == ("sts", "cache")
    assert first == second and len(sts.calls) == broker.sts_calls == 1
    request = sts.calls[0]
    assert request.duration == 3600 and request.web_identity_token is None
    assert request.who.session_name.startswith("svc-etl-7-") and request.who.source_identity == request.who.session_name


async def test_concurrent_callers_share_one_sts_call(clock: Clock, sleeps: list[float]) -> None:
    sts = FakeSts(clock, gate=asyncio.Event())
    broker = make_broker(clock, sts, sleeps)
    callers = [asyncio.create_task(vend(broker)) for _ in range(200)]
    await sts.until_calls(1)   # tasks run in creation order: every caller is waiting on the flight now
    sts.gate.set()
    results = await asyncio.gather(*callers)
    assert len(sts.calls) == 1
    assert {creds.access_key_id for creds, _ in results} == {"ASIA0000000000000001"}


async def test_distinct_callers_get_distinct_sessions(clock: Clock, sleeps: list[float]) -> None:
    sts = FakeSts(clock)
    broker = make_broker(clock, sts, sleeps)
    results = await asyncio.gather(*(vend(broker, f"svc-{i}") for i in range(20)))
    assert len(sts.calls) == 20 and len({c.access_key_id for c, _ in results}) == 20


async def test_refresh_ahead_serves_the_cached_set_and_refreshes_in_the_background(
        clock: Clock, sleeps: list[float]) -> None:
    sts = FakeSts(clock, gate=asyncio.Event())
    sts.gate.set()
    broker = make_broker(clock, sts, sleeps)
    first, _ = await vend(broker)
    clock.now += 3600 - REFRESH_AHEAD + 1          # inside the refresh-ahead band, above the vend minimum
    sts.gate.clear()
    again, source = await vend(broker)
    assert again == first and source == "cache"      # answered at once from the cache...
    await sts.until_calls(2)                         # ...while the refresh runs behind it
    sts.gate.set()
    await broker.idle()
    fresh, _ = await vend(broker)
    assert fresh.access_key_id == "ASIA0000000000000002"


async def test_below_thirty_minutes_the_caller_waits_for_fresh_credentials(clock: Clock, sleeps: list[float]) -> None:
    sts = FakeSts(clock)
    broker = make_broker(clock, sts, sleeps)
    await vend(broker)
    clock.now += 3600 - VEND_MIN_REMAINING + 1
    fresh, source = await vend(broker)
    assert source == "sts" and fresh.remaining(clock()) >= VEND_MIN_REMAINING


async def test_a_failed_refresh_keeps_serving_credentials_still_outside_botocores_window(
        clock: Clock, sleeps: list[float]) -> None:
    sts = FakeSts(clock)
    broker = make_broker(clock, sts, sleeps)
    first, _ = await vend(broker)
    clock.now += 3600 - VEND_MIN_REMAINING + 1
    sts.script = [DependencyError("STS is unavailable", reason="sts_unavailable")]
    stale, source = await vend(broker)
    assert stale == first and source == "stale"
    clock.now = first.expiration - FALLBACK_MIN_REMAINING + 1    # now inside botocore's refresh window
    sts.script = [DependencyError("STS is unavailable", reason="sts_unavailable")]
    with pytest.raises(DependencyError):
        await vend(broker)


async def test_a_failed_background_refresh_pauses_further_background_refreshes(
        clock: Clock, sleeps: list[float]) -> None:
    sts = FakeSts(clock)
    broker = make_broker(clock, sts, sleeps)
    await vend(broker)
    clock.now += 3600 - REFRESH_AHEAD + 1
    sts.script = [DependencyError("STS is unavailable", reason="sts_unavailable")]
    await vend(broker)
    await broker.idle()
    assert len(sts.calls) == 2
    await vend(broker)                  # within the pause: no third call
    await broker.idle()
    assert len(sts.calls) == 2
    clock.now += 60
    await vend(broker)
    await broker.idle()
    assert len(sts.calls) == 3


async def test_throttling_backs_off_with_jitter_then_succeeds(clock: Clock, sleeps: list[float]) -> None:
    throttled = [StsThrottled("slow down", reason="sts_throttled") for _ in range(THROTTLE_ATTEMPTS - 1)]
    sts = FakeSts(clock, script=[*throttled, 3600.0])
    broker = make_broker(clock, sts, sleeps)
    _, source = await vend(broker)
    assert source == "sts" and len(sts.calls) == THROTTLE_ATTEMPTS
    assert sleeps == [0.05, 0.1, 0.2]     # jitter 0.5 × (0.1, 0.2, 0.4): exponential, capped, randomized


async def test_throttling_that_does_not_stop_is_a_503(clock: Clock, sleeps: list[float]) -> None:
    sts = FakeSts(clock, script=[StsThrottled("slow down", reason="sts_throttled") for _ in range(THROTTLE_ATTEMPTS)])
    broker = make_broker(clock, sts, sleeps)
    with pytest.raises(StsThrottled) as caught:
        await vend(broker)
    assert caught.value.status == 503 and len(sts.calls) == THROTTLE_ATTEMPTS


async def test_other_errors_are_not_retried(clock: Clock, sleeps: list[float]) -> None:
    sts = FakeSts(clock, script=[AccessDenied("no", reason="sts_access_denied")])
    broker = make_broker(clock, sts, sleeps)
    with pytest.raises(AccessDenied):
        await vend(broker)
    assert len(sts.calls) == 1 and sleeps == []


@pytest.mark.parametrize(("lifetime", "reason"), [(-5.0, "sts_expired_credentials"), (0.0, "sts_expired_credentials"),
                                                  (VEND_MIN_REMAINING - 1, "sts_short_lived")])
async def test_sts_answers_that_cannot_be_vended_are_refused(clock: Clock, sleeps: list[float],
                                                            lifetime: float, reason: str) -> None:
    sts = FakeSts(clock, script=[lifetime])
    broker = make_broker(clock, sts, sleeps)
    with pytest.raises(DependencyError) as caught:
        await vend(broker)
    assert caught.value.reason == reason


async def test_web_identity_roles_pass_the_callers_token(clock: Clock, sleeps: list[float]) -> None:
    sts = FakeSts(clock)
    broker = make_broker(clock, sts, sleeps)
    await vend(broker, web_identity=True, token="caller.jwt.here")
    assert sts.calls[0].web_identity_token == "caller.jwt.here"


async def test_web_identity_credentials_are_never_served_to_a_token_sts_did_not_see(
        clock: Clock, sleeps: list[float]) -> None:
    sts = FakeSts(clock)
    broker = make_broker(clock, sts, sleeps)
    first, _ = await vend(broker, web_identity=True, token="token-aud-A")
    second, source = await vend(broker, web_identity=True, token="token-aud-B")
    again, again_source = await vend(broker, web_identity=True, token="token-aud-A")
    assert [c.web_identity_token for c in sts.calls] == ["token-aud-A", "token-aud-B"]
    assert source == "sts" and second != first
    assert again_source == "cache" and again == first


def test_secrets_never_show_in_a_repr() -> None:
    creds = AwsCredentials("ASIAKEY", "wJalrXUtnFEMI", "FwoGZXIvYXdzE", 0.0)
    assert "wJalrXUtnFEMI" not in repr(creds) and "FwoGZXIvYXdzE" not in repr(creds)
