"""The DynamoDB gateway's own cost per call, in-process on one core with only the network hops removed:
idgate's real services (admission, Pipeline, SessionOpener, policy store, AuditLog with fsync on) and a
DynamoDbGateway whose pool answers at once without a connection and whose broker's STS answers at once,
so the STS credentials and key schemas come from their caches as they do in steady state.

A call is made two ways, in rounds that take turns: whole, as the edge makes it, and stepwise, the same
steps called one by one in the call's order, each timed where it runs (a step timed alone in a tight loop
runs on hot caches: it reads about a third cheaper than inside a call).  Whole calls are timed by the
wall clock, the event loop thread's CPU clock and the process's (the audit's file thread included);
steps by the wall clock and the loop thread's CPU clock.

Run by bench.bench_gateway on the server core, or alone:
    .venv/bin/python -m bench._gateway_cost [--core 0] [--rounds 5] [--requests 2000] [--no-fsync]
It prints one JSON line.  With --profile-seconds S it prints `ready`, waits for a line on stdin, makes
whole calls for S seconds (for py-spy to sample) and prints nothing more.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import statistics
import sys
import time
import timeit
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from bench._dynamodb_client import get_item_body, signed_headers
from bench._gateway import AUDIENCE, GATEWAY_PATH, ISSUER, tenant_token, write_config
from bench._stack import workdir
from proxy.audit import AuditLog
from proxy.aws.broker import CredentialBroker
from proxy.aws.credentials import AwsCredentials
from proxy.aws.dynamodb import calls
from proxy.aws.dynamodb.calls import CONTENT_TYPE, TARGET_PREFIX
from proxy.aws.dynamodb.touches import touches as call_touches
from proxy.aws.gateway import DynamoDbGateway, table_namer
from proxy.aws.gateway_records import outcome_view
from proxy.aws.gateway_tokens import SessionOpener
from proxy.aws.sigv4 import SignedRequest, check_payload_hash, check_signature, parse_signed
from proxy.aws.sts import AssumeRequest
from proxy.config import load_config
from proxy.core.model import AccessRequest, Surface
from proxy.dev.issuer import DevIssuer
from proxy.edges._admission import Received, admit
from proxy.edges.dynamodb import GATE, _forward     # the edge's own forwarding step, not a copy of it
from proxy.pipeline import GatewayCall, Pipeline
from proxy.policy.dynamodb import authorize as authorize_touches
from proxy.services import Services, running_services
from proxy.transport import http1
from tests.harness.processes import HOST

TARGET = TARGET_PREFIX + "GetItem"
SIGNED_FOR = f"http://{HOST}:8443{GATEWAY_PATH}"    # any Host will do: the config names none (aws.gateway.hosts)
TARGET_US = 300.0
WARM_UP_CALLS = 200

# What moto answers (its headers, an orders item, the orders table's key schema: tests/harness/gateway.py).
_HEADERS = (("Content-Type", CONTENT_TYPE), ("x-amzn-RequestId", "8Y0HBZYY4S3VDM5TK2RJ6QK3TFBEXAMPLE"),
            ("x-amz-crc32", "2745614147"))
_ANSWERS = {
    "GetItem": json.dumps({"Item": {"pk": {"S": "acme"}, "sk": {"S": "1"}, "status": {"S": "new"},
                                    "amount": {"N": "5"}}}).encode(),
    "DescribeTable": json.dumps({"Table": {
        "TableName": "orders",
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        "LocalSecondaryIndexes": [{"IndexName": "by-sk", "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk2", "KeyType": "RANGE"}]}],
        "GlobalSecondaryIndexes": [{"IndexName": "by-status", "KeySchema": [
            {"AttributeName": "status", "KeyType": "HASH"}]}]}}).encode(),
}


class _Answered:
    """An exchange that is over before it starts: DynamoDB's answer, whole."""

    def __init__(self, body: bytes) -> None:
        self.status, self.reason, self.headers = 200, "OK", list(_HEADERS)
        self._body = body

    async def __aenter__(self) -> _Answered:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def read(self) -> bytes:
        body, self._body = self._body, b""
        return body


class _NullPool(http1.Pool):
    """The upstream replaced by nothing: the pool answers every request at once, opening no connection."""

    def request(self, origin: http1.Origin, method: str, target: str, headers: list[tuple[str, str]],
                body: Any = None, *, connect_timeout: float, read_timeout: float) -> Any:
        operation = next(v for k, v in headers if k.lower() == "x-amz-target").removeprefix(TARGET_PREFIX)
        return _Answered(_ANSWERS[operation])


class _InstantSts:
    """STS replaced by nothing: credentials at once (the broker then serves them from its cache)."""

    async def assume(self, request: AssumeRequest) -> AwsCredentials:
        return AwsCredentials("ASIABENCH0000000001", "bench-upstream-secret", "bench-upstream-token",
                              time.time() + 3600)


class _Recording:
    """The audit log, keeping what it is handed: the decision record the audit step appends is the
    pipeline's own."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        self.records: list[dict[str, Any]] = []

    async def append(self, record: dict[str, Any]) -> int:
        self.records.append(record)
        return await self.audit.append(record)

    def append_nowait(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.audit.append_nowait(record)


class Request(NamedTuple):
    """A signed GetItem as the edge has it once the body is read."""

    received: Received
    body: bytes


class Ticks:
    """Each step's wall and event-loop-thread CPU nanoseconds, one tick after another within a call."""

    def __init__(self) -> None:
        self.wall: dict[str, list[int]] = {}
        self.cpu: dict[str, list[int]] = {}
        self._wall = self._cpu = 0

    def start(self) -> None:
        self._wall, self._cpu = time.perf_counter_ns(), time.thread_time_ns()

    def __call__(self, step: str) -> None:
        wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
        self.wall.setdefault(step, []).append(wall - self._wall)
        self.cpu.setdefault(step, []).append(cpu - self._cpu)
        self._wall, self._cpu = time.perf_counter_ns(), time.thread_time_ns()


# The steps of a call as Call.stepwise ticks them, grouped as the report shows them.
STEPS = {
    "admission": ("admission",),
    "verify": ("verify: parse_signed", "verify: open session (cached)", "verify: check_signature"),
    "policy (role, session policy)": ("policy (role, session policy)",),
    "decode (call, touches)": ("decode (call, touches)",),
    "authorize (grants, touches)": ("authorize (grants, touches)",),
    "cached STS credentials, key schema": ("cached STS credentials, key schema",),
    "audit": ("audit: decision record durable", "audit: outcome record"),
    "re-sign (null upstream)": ("re-sign (null upstream)",),
}


class Call:
    """One GetItem through the gateway: `whole` as the edge makes it, `stepwise` as the same steps called
    one by one and ticked.  What the steps take beyond the request comes from one reference call made
    first (the decision record the audit step appends is the one the pipeline built)."""

    access: AccessRequest
    gateway_call: GatewayCall
    decision_record: dict[str, Any]
    namer: calls.TableNamer

    def __init__(self, services: Services, gateway: DynamoDbGateway, credentials: AwsCredentials) -> None:
        self.services, self.gateway, self.credentials = services, gateway, credentials
        self.opener = SessionOpener(gateway.ring)

    def sign(self, round_no: int, count: int) -> list[Request]:
        """`count` GetItems, each of another item, signed now (valid for the gateway's clock skew)."""
        batch = []
        for i in range(count):
            body = get_item_body(str(i))
            headers = signed_headers(SIGNED_FOR, body, self.credentials)
            batch.append(Request(Received(request_id=f"bench-{round_no}-{i}", peer=HOST, client_addr=HOST,
                                          method="POST", hosts=[next(v for k, v in headers if k == "Host")],
                                          target=GATEWAY_PATH, headers=headers), body))
        return batch

    async def reference(self) -> None:
        """One call through a pipeline whose audit sink keeps the records: what the steps take."""
        services, gateway = self.services, self.gateway
        recording = _Recording(services.audit)
        pipeline = Pipeline(services.verifier, services.policy, recording, services.metrics)
        received, body = self.sign(0, 1)[0]
        self.access = (await admit(services, GATE, received)).access
        head = SignedRequest("POST", GATEWAY_PATH, "", received.headers, b"")
        self.gateway_call = await pipeline.authorize_dynamodb(self.access, head, _body_of(body), gateway)
        self.decision_record = recording.records[-1]
        self.namer = table_namer(self.gateway_call.caller.session.role_arn, gateway.region)

    async def whole(self, request: Request) -> None:
        """As proxy.edges.dynamodb.handle does, from admission to the outcome record (less HTTP and the body read)."""
        services, gateway = self.services, self.gateway
        received, body = request
        admitted = await admit(services, GATE, received)
        head = SignedRequest(admitted.access.method, admitted.raw_path, admitted.query, received.headers, b"")
        call = await services.pipeline.authorize_dynamodb(admitted.access, head, _body_of(body), gateway)
        await _forward(services, gateway, admitted.access, call)

    async def stepwise(self, request: Request, tick: Ticks) -> None:
        """The whole call's steps, in its order, each ticked (the decision record is not rebuilt)."""
        services, gateway, config, namer = self.services, self.gateway, self.gateway.config, self.namer
        region, reference = gateway.region, self.gateway_call
        received, body = request
        tick.start()
        admitted = await admit(services, GATE, received)
        signed = SignedRequest(admitted.access.method, admitted.raw_path, admitted.query, received.headers, body)
        tick("admission")
        credential = parse_signed(dataclasses.replace(signed, body=b""), region=region, service="dynamodb",
                                  now=time.time(), max_skew=config.max_clock_skew)
        tick("verify: parse_signed")
        session, secret = self.opener.open(credential.access_key_id, credential.security_token, time.time())
        tick("verify: open session (cached)")
        check_payload_hash(signed)
        check_signature(signed, credential, secret)
        tick("verify: check_signature")
        choice, policy, grants, _ = services.pipeline._gateway_plan(reference.caller, region)   # noqa: SLF001
        tick("policy (role, session policy)")
        call = calls.decode(calls.operation(TARGET), body, namer)
        touches = call_touches(call, reference.schemas, namer)
        tick("decode (call, touches)")
        assert all(any(g.table == table for g in grants) for table in call.tables)
        assert authorize_touches(touches, grants).allowed
        tick("authorize (grants, touches)")
        upstream = await gateway.upstream_credentials(reference.caller, choice, policy)
        schemas = await gateway.key_schemas(namer, call.tables, upstream)
        tick("cached STS credentials, key schema")
        await services.audit.append(self.decision_record)
        tick("audit: decision record durable")
        answer = await gateway.send("GetItem", body, signed.headers, upstream)
        tick("re-sign (null upstream)")
        view = outcome_view(call, schemas, answer.status, answer.body, reference.redact, error_type=None)
        view["aws_request_id"] = answer.header("x-amzn-requestid")
        services.pipeline.record_dynamodb_outcome(self.access, reference, view, bytes_in=len(body),
                                                  bytes_out=len(answer.body), duration=answer.seconds)
        tick("audit: outcome record")


def _body_of(body: bytes) -> Callable[[], Awaitable[bytes]]:
    """The edge's body reader, for a body already here."""
    async def read() -> bytes:
        return body
    return read


def _cut(values: list[int], q: int) -> float:
    """The q-th percentile of nanoseconds, in µs."""
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1] / 1000, 1)


async def _whole_calls(call: Call, batch: list[Request], figures: dict[str, list[int]]) -> None:
    for request in batch:
        wall, cpu, process = time.perf_counter_ns(), time.thread_time_ns(), time.process_time_ns()
        await call.whole(request)
        figures["process"].append(time.process_time_ns() - process)
        figures["cpu"].append(time.thread_time_ns() - cpu)
        figures["wall"].append(time.perf_counter_ns() - wall)


async def _stepwise_calls(call: Call, batch: list[Request], ticks: Ticks) -> None:
    for request in batch:
        await call.stepwise(request, ticks)


async def _measure(call: Call, rounds: int, requests: int) -> dict[str, Any]:
    """A discarded warm-up, then `rounds` rounds of whole calls and stepwise calls over a fresh batch of
    signed requests, which of the two goes first alternating."""
    warm = call.sign(0, WARM_UP_CALLS)
    await _whole_calls(call, warm, {"wall": [], "cpu": [], "process": []})
    await _stepwise_calls(call, warm, Ticks())
    whole: dict[str, list[int]] = {"wall": [], "cpu": [], "process": []}
    ticks = Ticks()
    rounds_whole: list[float] = []
    for round_no in range(1, rounds + 1):
        batch = call.sign(round_no, requests)
        before = len(whole["process"])
        for kind in ("whole", "stepwise") if round_no % 2 else ("stepwise", "whole"):
            if kind == "whole":
                await _whole_calls(call, batch, whole)
            else:
                await _stepwise_calls(call, batch, ticks)
        rounds_whole.append(round(statistics.median(whole["process"][before:]) / 1000, 1))
        print(f"  cost round {round_no}: whole call CPU p50 {rounds_whole[-1]} µs", file=sys.stderr, flush=True)

    def row(names: tuple[str, ...]) -> dict[str, Any]:
        # Per call, the sum of its ticks: the median of sums, not a sum of medians.
        wall = [sum(parts) for parts in zip(*(ticks.wall[name] for name in names))]
        cpu = [sum(parts) for parts in zip(*(ticks.cpu[name] for name in names))]
        return {"wall_p50_us": _cut(wall, 50), "wall_p99_us": _cut(wall, 99),
                "cpu_p50_us": _cut(cpu, 50), "cpu_p99_us": _cut(cpu, 99)}

    every = tuple(name for names in STEPS.values() for name in names)
    stepwise_total = row(every)
    whole_row: dict[str, Any] = {
        "wall_p50_us": _cut(whole["wall"], 50), "wall_p99_us": _cut(whole["wall"], 99),
        "cpu_p50_us": _cut(whole["cpu"], 50), "cpu_p99_us": _cut(whole["cpu"], 99),
        "process_cpu_p50_us": _cut(whole["process"], 50), "process_cpu_p99_us": _cut(whole["process"], 99),
        "calls": len(whole["wall"]), "rounds_process_cpu_p50_us": rounds_whole,
    }
    return {
        "rounds": rounds, "requests_per_round": requests,
        "whole": whole_row,
        "steps": {group: {**row(names), **({"parts": {name: row((name,)) for name in names}} if len(names) > 1 else {})}
                  for group, names in STEPS.items()},
        "stepwise_total": stepwise_total,
        # What the stepwise call leaves out: building the decision record, metrics, GatewayCall, the edge's glue.
        "not_in_steps_cpu_p50_us": round(whole_row["cpu_p50_us"] - stepwise_total["cpu_p50_us"], 1),
        "target_us": TARGET_US,
        "met": whole_row["process_cpu_p50_us"] < TARGET_US,
    }


async def _loop(call: Call, seconds: float, batch: list[Request]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for request in batch:
            await call.whole(request)


def _calibration() -> float:
    """µs for `sum(range(1000))` on this core (best of 5): how fast this machine runs Python, so that
    figures from different machines can be compared."""
    return round(min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000 * 1e6, 2)


async def _vend(services: Services, gateway: DynamoDbGateway, token: str) -> AwsCredentials:
    """Gateway credentials for the tenant, from the pipeline as the credentials endpoint gets them."""
    access = AccessRequest(Surface.CREDENTIALS, "bench-vend", "GET", HOST, services.config.credentials.path, HOST)
    assert services.broker is not None
    _, credentials = await services.pipeline.authorize_aws(access, token, None, services.broker, gateway)
    return credentials


async def run(rounds: int, requests: int, profile_seconds: float, fsync: bool = True) -> dict[str, Any] | None:
    with workdir("idgate-bench-gateway-cost-") as home:
        issuer = DevIssuer(ISSUER, AUDIENCE)
        # The endpoint is never reached: the gateway below forwards to nothing.
        config = load_config(write_config(home, issuer, endpoint=f"http://{HOST}:9", fsync=fsync))
        async with running_services(config) as services:
            assert services.gateway is not None
            gateway = DynamoDbGateway(config.aws.gateway, config.aws.region, services.gateway.ring,
                                      CredentialBroker(config.aws, _InstantSts(), metrics=services.metrics),
                                      _NullPool(), services.metrics)
            services.gateway = gateway
            call = Call(services, gateway, await _vend(services, gateway, tenant_token(issuer)))
            await call.reference()
            if profile_seconds:
                batch = call.sign(1, requests)
                await _loop(call, 1.0, batch)
                print("ready", flush=True)
                await asyncio.to_thread(sys.stdin.readline)
                await _loop(call, profile_seconds, batch)
                return None
            return {"audit_dir": str(home), "fsync": config.audit.fsync, "calibration_us": _calibration(),
                    **await _measure(call, rounds, requests)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--core", type=int, default=min(os.sched_getaffinity(0)), help="the one core to run on")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000, help="calls per step per round")
    parser.add_argument("--profile-seconds", type=float, default=0.0)
    parser.add_argument("--no-fsync", action="store_true", help="audit fsync off (what durability costs)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.core})     # the audit's file thread, started later, inherits it
    logging.getLogger("idgate").setLevel(logging.ERROR)     # the per-process assertion key warning
    result = asyncio.run(run(args.rounds, args.requests, args.profile_seconds, not args.no_fsync))
    if result is not None:
        print(json.dumps({"core": args.core, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
