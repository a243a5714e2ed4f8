"""Red team of issue 15 points 3-4 (stale or missing keys refetch on the next request; "unavailable", not
"invalid", when idgate cannot know).  An attacker holds no issuer key: they send tokens naming a configured
issuer with kids idgate has never seen, as many and as concurrently as they like, while the issuer is up,
down, or just back.  idgate is a real `idgate serve` process; the issuers are development issuers on fixed
loopback ports that the test stops (connection refused) and starts again, counting the JWKS requests they
answer; the upstream records what reaches it."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yaml
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.dev.issuer import DEMO_IDENTITIES, DevIssuer
from tests.harness.processes import HOST, eventually_true, free_port
from tests.harness.servers import RecordingUpstream, serve_app, write_config

AUDIENCE = "orders-api"
SUBJECT = "svc-etl-7"
DEADLINE = 20.0
ATTACKER_KEY = ec.generate_private_key(ec.SECP256R1())


class Issuer:
    """A development issuer at a fixed URL that can be stopped (its port refuses) and started again, with
    the same key or a rotated one; counts the JWKS documents it served."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.dev = DevIssuer(self.url, AUDIENCE)
        self.jwks_served = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = self.dev.app()

        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.path == "/jwks":
                self.jwks_served += 1
            return await handler(request)

        app.middlewares.append(count)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def rotate(self) -> None:
        """A new signing key (and kid) at the same URL, served from the next start."""
        self.dev = DevIssuer(self.url, AUDIENCE)

    def token(self) -> str:
        return self.dev.mint(DEMO_IDENTITIES[SUBJECT])


def forged(issuer: Issuer, kid: str | None = None) -> str:
    """A well-formed access token naming `issuer`, signed with the attacker's key under `kid` (a fresh
    random one by default: a kid idgate has never seen)."""
    now = int(time.time())
    claims = {"iss": issuer.url, "sub": SUBJECT, "aud": AUDIENCE, "client_id": "idgate-demo",
              "groups": ["data-eng"], "tenant": "acme", "iat": now, "nbf": now, "exp": now + 600,
              "jti": secrets.token_hex(8)}
    return jwt.encode(claims, ATTACKER_KEY, algorithm="ES256",
                      headers={"kid": kid or f"forged-{secrets.token_hex(6)}", "typ": "at+jwt"})


@dataclass
class Idgate:
    url: str
    admin: str
    audit: Path
    http: aiohttp.ClientSession

    async def get(self, token: str) -> tuple[int, dict[str, str], dict[str, Any]]:
        async with self.http.get(self.url + "/v1/orders/7", headers={
                "Host": "orders.internal", "Authorization": f"Bearer {token}"}) as response:
            return response.status, dict(response.headers), await response.json(content_type=None)

    async def readiness(self) -> int | None:
        try:
            async with self.http.get(self.admin + "/readyz") as response:
                return response.status
        except aiohttp.ClientError:
            return None

    async def fetch_errors(self, issuer: Issuer) -> float:
        async with self.http.get(self.admin + "/metrics") as response:
            text = await response.text()
        wanted = f'idgate_jwks_fetches_total{{issuer="{issuer.url}",result="error"}} '
        return next((float(line[len(wanted):]) for line in text.splitlines() if line.startswith(wanted)), 0.0)

    def decisions(self) -> dict[str, dict[str, Any]]:
        records = [json.loads(line) for line in self.audit.read_text().splitlines() if line.strip()]
        return {r["request_id"]: r for r in records if r["event"] == "decision"}

    async def decision(self, request_id: str) -> dict[str, Any]:
        async def written() -> bool:
            return request_id in self.decisions()
        await eventually_true(written, f"the decision for {request_id} in the audit", timeout=DEADLINE)
        return self.decisions()[request_id]


def policies(tmp: Path, issuers: list[Issuer]) -> Path:
    directory = tmp / "policies"
    directory.mkdir()
    rules = [{"id": f"etl-read-orders-{n}", "who": {"issuer": issuer.url, "subject": ["svc-etl-*"]},
              "http": [{"hosts": ["orders.internal"], "methods": ["GET"], "paths": ["/v1/orders/**"]}]}
             for n, issuer in enumerate(issuers)]
    (directory / "rules.yaml").write_text(yaml.safe_dump({"rules": rules}))
    return directory


@asynccontextmanager
async def idgate_with(tmp: Path, issuers: list[Issuer], upstream: RecordingUpstream, *,
                      ready: bool = True) -> AsyncIterator[Idgate]:
    """`idgate serve` for `issuers` (default refresh_interval 300 s, unknown_kid_min_interval 60 s), its
    admin listener answering and, with `ready`, its /readyz saying 200."""
    port, admin = free_port(), free_port()
    config = write_config(tmp, issuer=issuers[0].url, audience=AUDIENCE, upstream_port=upstream.port,
                          policies=policies(tmp, issuers), listen={"host": HOST, "port": port},
                          admin={"host": HOST, "port": admin},
                          issuers=[{"issuer": i.url, "audiences": [AUDIENCE], "require_typ": "at+jwt"}
                                   for i in issuers])
    with open(tmp / "idgate.log", "wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "--config", str(config), "--log-level", "warning",
            stdout=log, stderr=log)
    async with aiohttp.ClientSession() as http:
        idgate = Idgate(f"http://{HOST}:{port}", f"http://{HOST}:{admin}", tmp / "audit" / "audit.jsonl", http)

        async def started() -> bool:
            assert process.returncode is None, (tmp / "idgate.log").read_text()
            status = await idgate.readiness()
            return status == 200 or (status is not None and not ready)

        try:
            await eventually_true(started, "idgate ready" if ready else "idgate's admin answering", timeout=DEADLINE)
            yield idgate
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), DEADLINE)


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    recording = RecordingUpstream()
    async with serve_app(recording.app()) as port:
        recording.port = port
        yield recording
        recording.release.set()


@pytest.fixture
async def issuers() -> AsyncIterator[list[Issuer]]:
    made = [Issuer() for _ in range(3)]
    for issuer in made:
        await issuer.start()
    yield made
    for issuer in made:
        await issuer.stop()


async def test_a_storm_of_random_kids_over_several_issuers_fetches_each_issuers_keys_at_most_once(
        tmp_path: Path, issuers: list[Issuer], upstream: RecordingUpstream) -> None:
    async with idgate_with(tmp_path, issuers, upstream) as idgate:
        before = [issuer.jwks_served for issuer in issuers]
        # 300 forged tokens at once, each with a kid never seen, spread over the three issuers, twice.
        for _ in range(2):
            answers = await asyncio.gather(*(idgate.get(forged(issuers[n % 3])) for n in range(300)))
            assert {(status, body["code"]) for status, _, body in answers} == {(401, "unauthenticated")}
        assert [issuer.jwks_served - b for issuer, b in zip(issuers, before)] == [1, 1, 1]
        reasons = {tuple(r["reasons"]) for r in idgate.decisions().values()}
        assert reasons == {("unknown_kid",)} and not upstream.received


async def test_during_an_outage_random_kids_are_503_single_flight_bounded_and_never_allowed(
        tmp_path: Path, issuers: list[Issuer], upstream: RecordingUpstream) -> None:
    down, up = issuers[0], issuers[1]
    async with idgate_with(tmp_path, issuers, upstream) as idgate:
        await down.stop()
        started = time.monotonic()
        answers = []
        for _ in range(4):   # waves of 100 concurrent forged tokens for 3 s or so
            answers += await asyncio.gather(*(idgate.get(forged(down)) for _ in range(100)))
        elapsed = time.monotonic() - started
        # Unknowable while the issuer cannot be asked: 503 to retry, with a small bounded Retry-After.
        assert {(status, body["code"]) for status, _, body in answers} == {(503, "unavailable")}
        assert {int(headers["Retry-After"]) for _, headers, _ in answers} <= set(range(1, 61))
        # Each attempt at the issuer is shared by every request waiting (single flight), and attempts are
        # at most one a second however many requests arrive.
        assert 1 <= await idgate.fetch_errors(down) <= elapsed + 2
        decision = await idgate.decision(answers[-1][2]["request_id"])
        assert (decision["decision"], decision["reasons"]) == ("deny", ["issuer_unavailable"])
        # The kid idgate holds for the down issuer, signed by someone else: that it can know, outage or not.
        status, _, body = await idgate.get(forged(down, kid=down.dev.kid))
        assert (status, body["code"]) == (401, "unauthenticated")
        assert (await idgate.decision(body["request_id"]))["reasons"] == ["bad_signature"]
        # The other issuers are not affected: their forged tokens are still plain 401s.
        status, _, _ = await idgate.get(forged(up))
        assert status == 401 and not upstream.received


async def test_once_the_issuer_is_back_a_forged_kid_is_401_again_not_503(
        tmp_path: Path, issuers: list[Issuer], upstream: RecordingUpstream) -> None:
    """A blip that makes one refetch fail must not let an attacker keep 503s (retry forever, or 'maybe
    valid') coming for their forged tokens after the issuer is back."""
    issuer = issuers[0]
    async with idgate_with(tmp_path, issuers, upstream) as idgate:
        await issuer.stop()
        assert (await idgate.get(forged(issuer)))[0] == 503
        await issuer.start()
        # Retry-After says 1 s: a client honouring it asks again after that long.
        await asyncio.sleep(1.1)   # the Retry-After the 503 asked for, not a synchronization
        status, _, body = await idgate.get(forged(issuer))
        assert (status, body["code"]) == (401, "unauthenticated")
        assert (await idgate.decision(body["request_id"]))["reasons"] == ["unknown_kid"]


async def test_a_key_rotated_during_a_long_outage_works_one_round_trip_after_the_issuer_is_back(
        tmp_path: Path, issuers: list[Issuer], upstream: RecordingUpstream) -> None:
    """Many failed attempts (clients retrying as told) must not grow into a wait that outlives the outage:
    the first retry after the issuer is back, Retry-After later, is served, and a crowd of them retrying at
    once costs the issuer one JWKS fetch."""
    issuer = issuers[0]
    async with idgate_with(tmp_path, issuers, upstream) as idgate:
        await issuer.stop()
        issuer.rotate()
        rotated = issuer.token()
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:   # a client retrying every Retry-After through the outage
            status, headers, _ = await idgate.get(rotated)
            assert status == 503
            await asyncio.sleep(float(headers["Retry-After"]))   # as the answer asks, not a synchronization
        await issuer.start()
        served = issuer.jwks_served
        await asyncio.sleep(float(headers["Retry-After"]))      # the clients' next retry after the outage
        # 50 at once: under the route's 64 upstream connections per identity, which would answer upstream_busy.
        answers = await asyncio.gather(*(idgate.get(issuer.token()) for _ in range(50)))
        assert [(status, body.get("code")) for status, _, body in answers] == [(200, None)] * 50
        assert issuer.jwks_served - served == 1 and len(upstream.received) == 50


async def test_an_instance_that_started_during_an_outage_is_ready_soon_after_the_issuer_is_back(
        tmp_path: Path, issuers: list[Issuer], upstream: RecordingUpstream) -> None:
    """Without keys idgate is not ready, so a load balancer sends it no request that could refetch: only
    the background retry ends its outage, and that retry's backoff must not have grown to minutes."""
    issuer = issuers[0]
    await issuer.stop()
    async with idgate_with(tmp_path, issuers, upstream, ready=False) as idgate:
        async def failed_five_times() -> bool:
            return await idgate.fetch_errors(issuer) >= 5      # at start, then after ~1, 2, 4 and 8 s
        await eventually_true(failed_five_times, "five failed fetches", timeout=DEADLINE + 10)
        assert await idgate.readiness() == 503
        await issuer.start()
        back = time.monotonic()

        async def ready() -> bool:
            return await idgate.readiness() == 200
        # The doubling backoff would wait another 13-16 s here (and up to refresh_interval, 300 s, later on).
        await eventually_true(ready, "ready again", timeout=DEADLINE)
        assert time.monotonic() - back < 8.0
        assert (await idgate.get(issuer.token()))[0] == 200
