"""`idgate serve` killed with SIGKILL while it ships (issue 11): restarted, it resumes from its checkpoint,
loses no record, and whatever it sent twice is the same line under the same (instance, seq), so a
consumer that drops duplicates holds exactly the local chain, in CloudWatch and in S3."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from proxy.audit import segment_files, verify_files
from tests.harness.moto import REGION, TEST_KEYS
from tests.harness.paths import REPO
from tests.harness.processes import HOST, POLL_INTERVAL, free_port
from tests.harness.servers import local_issuer, write_config
from tests.harness.relay import holding_relay
from tests.harness.shipping import LOG_GROUP, ShippingTarget, prewrite_chain
from tests.harness.stack import example_policies

DEADLINE = 60.0
RECORDS = 30_000                 # a few PutLogEvents rounds: a kill lands between two acknowledged batches


def local_lines(audit_path: Path) -> list[str]:
    return [line for f in segment_files(audit_path) for line in f.read_text().splitlines()]


def stored_bytes(target: ShippingTarget) -> int:
    """The message bytes CloudWatch (moto) holds in the records' stream."""
    streams = target.moto.client("logs").describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix="node-1")
    return sum(s.get("storedBytes", 0) for s in streams["logStreams"] if s["logStreamName"] == "node-1")


def checkpoint_seq(state_dir: Path) -> int:
    try:
        state = json.loads((state_dir / "cloudwatch.json").read_text())
    except FileNotFoundError:
        return 0
    return int(state["position"]["seq"]) if state.get("position") else 0


async def wait_for(condition: Callable[[], bool], what: str, process: asyncio.subprocess.Process | None = None) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert process is None or process.returncode is None, f"idgate exited before {what}"
        assert time.monotonic() < deadline, f"not {what} within {DEADLINE}s"
        await asyncio.sleep(POLL_INTERVAL)       # polling a file another process writes, bounded by the deadline


async def start_idgate(config: Path, log: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    """idgate serve, its log appended to `log`, once it says it serves (in this run's part of the log)."""
    offset = log.stat().st_size if log.exists() else 0
    with log.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=sink, env=env, cwd=REPO)
    await wait_for(lambda: b'"idgate serving"' in log.read_bytes()[offset:], "serving", process)
    return process


async def test_sigkill_while_shipping_loses_nothing_and_duplicates_nothing_after_dedupe(
        shipping_target: ShippingTarget, tmp_path: Path) -> None:
    shipping_target.create_bucket()
    audit_path = tmp_path / "audit" / "audit.jsonl"
    prewrite_chain(audit_path, RECORDS, lambda i: {"event": "decision", "i": i, "padding": "x" * 300})
    state_dir = audit_path.with_name("audit.jsonl.shipping")
    env = {**os.environ, "PYTHONPATH": str(REPO), "AWS_ACCESS_KEY_ID": TEST_KEYS["aws_access_key_id"],
           "AWS_SECRET_ACCESS_KEY": TEST_KEYS["aws_secret_access_key"], "AWS_DEFAULT_REGION": REGION}
    log = tmp_path / "idgate.log"
    async with local_issuer("orders-api") as issuer, holding_relay(shipping_target.moto.port) as relay:
        port = free_port()
        audit = shipping_target.audit_section(audit_path)
        audit["shipping"]["cloudwatch"]["endpoint"] = relay.url     # CloudWatch through the relay
        config = write_config(tmp_path, issuer=issuer.issuer.issuer_url, audience="orders-api",
                              upstream_port=free_port(), policies=example_policies(tmp_path, issuer.issuer.issuer_url),
                              listen={"host": HOST, "port": port}, audit={**audit, "rotate_bytes": 4 << 20})
        # 1: killed while CloudWatch has stored a batch whose acknowledgement the relay holds back.
        process = await start_idgate(config, log, env)
        await wait_for(lambda: checkpoint_seq(state_dir) > 0, "a first batch checkpointed", process)
        relay.hold()
        acknowledged = checkpoint_seq(state_dir)
        await wait_for(lambda: stored_bytes(shipping_target) > sum(map(len, local_lines(audit_path)[:acknowledged])),
                       "a batch stored but not acknowledged", process)
        process.send_signal(signal.SIGKILL)
        await process.wait()
        relay.drop_all()
        resent_from = checkpoint_seq(state_dir)
        # 2: killed as it goes, somewhere after a checkpoint.
        process = await start_idgate(config, log, env)
        await wait_for(lambda: resent_from < checkpoint_seq(state_dir) < RECORDS, "shipping under way", process)
        process.send_signal(signal.SIGKILL)
        await process.wait()
        # 3: runs to the end, serves a request, stops cleanly.
        process = await start_idgate(config, log, env)
        try:
            token = issuer.token("svc-etl-7", ("data-eng",), tenant="acme")
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://{HOST}:{port}/v1/orders/7",
                                    headers={"Host": "orders.internal", "Authorization": f"Bearer {token}"}) as response:
                    assert response.status in (200, 502)     # no upstream runs: the decision is audited either way
        finally:
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), DEADLINE) == 0

    assert verify_files(segment_files(audit_path)).ok
    local = local_lines(audit_path)
    assert len(local) > RECORDS                      # the records of the last run's request came after
    shipped = shipping_target.messages("node-1")
    by_seq: dict[tuple[str, int], str] = {}
    for message in shipped:
        record = json.loads(message)
        key = (record["instance"], record["seq"])
        assert by_seq.setdefault(key, message) == message, f"seq {key} shipped twice with different bytes"
    assert len(shipped) > len(by_seq), "the batch whose acknowledgement was lost was not sent again"
    assert sorted(seq for _, seq in by_seq) == list(range(1, len(local) + 1)), "records lost"
    assert [by_seq[("node-1", seq)] for seq in range(1, len(local) + 1)] == local
    # Every rotated segment is in S3 under its seq range, byte for byte.
    rotated = segment_files(audit_path)[:-1]
    assert rotated                                  # the first new record rotated the prewritten segment
    expected = {f"audit/node-1/{_first_seq(f):012d}-{int(f.name.split('.')[-2]):012d}.jsonl": f.read_bytes()
                for f in rotated}
    assert {k: shipping_target.object(k) for k in shipping_target.keys() if k.endswith(".jsonl")} == expected
    # The clean stop shipped the rest and anchored the very last record.
    anchors = shipping_target.messages("node-1.anchors")
    last_anchor = json.loads(_payload(anchors[-1]))
    assert last_anchor["seq"] == len(local) and last_anchor["hash"] == json.loads(local[-1])["hash"]


def _first_seq(segment: Path) -> int:
    with segment.open("rb") as f:
        return int(json.loads(f.readline())["seq"])


def _payload(token: str) -> bytes:
    import base64

    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
