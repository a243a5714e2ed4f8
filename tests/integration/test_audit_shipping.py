"""Audit shipping against a real moto server as CloudWatch Logs and S3 (issue 11): records arrive in
order, exactly as written; rotated segments land in S3 under their seq range; anchors are stored."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from proxy.audit import segment_files, verify_files
from tests.harness.moto import MotoServer
from tests.harness.processes import eventually, eventually_true
from tests.harness.shipping import BUCKET, ShippingTarget, write_anchor_key, write_rotated_segment
from tests.harness.stack import Stack


async def test_records_arrive_in_order_and_exactly_as_written(make_stack: Any, shipping_target: ShippingTarget,
                                                             tmp_path: Path) -> None:
    shipping_target.create_bucket()
    audit_path = tmp_path / "audit" / "audit.jsonl"
    stack: Stack = await make_stack(audit={**shipping_target.audit_section(audit_path), "rotate_bytes": 4096})
    token = stack.etl_token()
    for i in range(30):
        response = await stack.get(f"/v1/orders/{i}", token=token)
        assert response.status == 200
    await stack.idgate.settled()
    durable = stack.idgate.services.audit.durable.seq
    await eventually(lambda: len(shipping_target.messages("node-1")) >= durable, "every record in CloudWatch")
    lines = [line for f in segment_files(audit_path) for line in f.read_text().splitlines()]
    assert shipping_target.messages("node-1")[:durable] == lines[:durable]
    await eventually(lambda: any(k.endswith(".jsonl") for k in shipping_target.keys()), "a segment in S3")
    await eventually(lambda: shipping_target.messages("node-1.anchors") != [], "an anchor in CloudWatch")


def metric(stack: Stack, name: str, **labels: str) -> float:
    return stack.idgate.services.metrics.registry.get_sample_value(name, labels) or 0.0


async def readiness(stack: Stack) -> tuple[int, dict[str, Any]]:
    async with stack.http.get(stack.idgate.admin_url + "/readyz") as response:
        return response.status, await response.json()


async def test_a_cloudwatch_outage_never_holds_a_request_and_shipping_catches_up(
        make_stack: Any, aws_env: None, tmp_path: Path) -> None:
    """moto stopped: requests are answered while every shipment fails, /readyz says how far behind
    shipping is, and once moto is back (empty: a new process) the records from the checkpoint on arrive."""
    with MotoServer() as moto:
        target = ShippingTarget(moto, write_anchor_key(tmp_path))
        audit_path = tmp_path / "audit" / "audit.jsonl"
        stack: Stack = await make_stack(audit=target.audit_section(audit_path, s3=False, max_lag_seconds=0.5))
        token = stack.etl_token()
        assert (await stack.get("/v1/orders/1", token=token)).status == 200
        await stack.idgate.settled()
        before = stack.idgate.services.audit.durable.seq
        await eventually(lambda: len(target.messages("node-1")) == before, "the first records in CloudWatch")
        moto.stop()
        for i in range(40):
            assert (await stack.get(f"/v1/orders/{i}", token=token)).status == 200
        await eventually(lambda: metric(stack, "idgate_audit_ship_failures_total", sink="cloudwatch",
                                        code="ConnectionError") >= 2, "shipments failing")
        # Requests keep being answered and audited while shipping fails.
        assert (await stack.get("/v1/orders/99", token=token)).status == 200
        await stack.idgate.settled()
        durable = stack.idgate.services.audit.durable.seq

        async def behind() -> bool:
            status, body = await readiness(stack)
            return status == 503 and body["checks"]["audit_shipping"] is False

        await eventually_true(behind, "/readyz not ready while shipping is behind")
        _, body = await readiness(stack)
        assert body["audit_shipping"]["cloudwatch"]["lag_records"] == durable - before
        moto.start()                                # the same port, no state: the group and streams are gone
        await eventually(lambda: len(target.messages("node-1")) >= durable - before, "shipping caught up", timeout=30)
        shipped = target.records("node-1")
        assert [r["seq"] for r in shipped] == list(range(before + 1, durable + 1))
        await eventually_true(lambda: _ready(stack), "/readyz ready again")


async def _ready(stack: Stack) -> bool:
    return (await readiness(stack))[0] == 200


async def test_shipped_objects_are_locked_and_never_overwritten(make_stack: Any, shipping_target: ShippingTarget,
                                                                tmp_path: Path) -> None:
    shipping_target.create_bucket(object_lock=True)
    audit_path = tmp_path / "audit" / "audit.jsonl"
    stack: Stack = await make_stack(audit={
        **shipping_target.audit_section(audit_path, cloudwatch=False, object_lock={"mode": "COMPLIANCE", "days": 1}),
        "rotate_bytes": 2048})
    token = stack.etl_token()
    for i in range(12):
        assert (await stack.get(f"/v1/orders/{i}", token=token)).status == 200
    await eventually(lambda: any(k.endswith(".jsonl") for k in shipping_target.keys()), "a segment in S3")
    key = next(k for k in shipping_target.keys() if k.endswith(".jsonl"))
    s3 = shipping_target.moto.client("s3")
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=BUCKET, Key=key, VersionId=head["VersionId"])
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert shipping_target.object(key) == (audit_path.parent / _rotated_name(audit_path, key)).read_bytes()
    # Even with GOVERNANCE's bypass header, COMPLIANCE holds.
    with pytest.raises(ClientError):
        s3.delete_object(Bucket=BUCKET, Key=key, VersionId=head["VersionId"], BypassGovernanceRetention=True)


def _rotated_name(audit_path: Path, key: str) -> str:
    last = int(key.rsplit("-", 1)[1].split(".")[0])
    (match,) = [p for p in segment_files(audit_path) if p.name.endswith(f".{last:012d}.jsonl")]
    return match.name


async def test_a_segment_name_taken_by_other_bytes_halts_s3_shipping_and_retention_keeps_the_segment(
        make_stack: Any, shipping_target: ShippingTarget, tmp_path: Path) -> None:
    """Another writer (or an intruder) put different bytes under the key idgate will use: never
    overwritten, never taken as shipped, said in the log and the metric, and nothing is deleted."""
    shipping_target.create_bucket()
    s3 = shipping_target.moto.client("s3")
    s3.put_object(Bucket=BUCKET, Key="audit/node-1/000000000001-000000000006.jsonl", Body=b"forged\n")
    audit_path = tmp_path / "audit" / "audit.jsonl"
    write_rotated_segment(audit_path, 6, time.time())
    stack: Stack = await make_stack(audit={**shipping_target.audit_section(audit_path, cloudwatch=False),
                                           "rotate_bytes": 2048, "max_segments": 1})
    token = stack.etl_token()
    for i in range(10):
        assert (await stack.get(f"/v1/orders/{i}", token=token)).status == 200
    await eventually(lambda: metric(stack, "idgate_audit_ship_halted", sink="s3") == 1, "S3 shipping halted")
    assert shipping_target.object("audit/node-1/000000000001-000000000006.jsonl") == b"forged\n"
    files = segment_files(audit_path)
    assert files[0].name.endswith(".000000000006.jsonl")       # retention kept what is not shipped
    assert verify_files(files).ok
    status, body = await readiness(stack)
    assert status == 503 and "other bytes" in body["audit_shipping"]["s3"]["halted"]


async def test_events_cloudwatch_refuses_go_to_the_gap_ledger(make_stack: Any, shipping_target: ShippingTarget,
                                                              tmp_path: Path) -> None:
    """Records older than CloudWatch accepts (14 days) are refused: they go to the gap ledger, the
    metric and the log, and shipping goes on past them; they stay in the local segments."""
    audit_path = tmp_path / "audit" / "audit.jsonl"
    write_rotated_segment(audit_path, 5, time.time() - 20 * 86400)
    stack: Stack = await make_stack(audit=shipping_target.audit_section(audit_path, s3=False))
    assert (await stack.get("/v1/orders/1", token=stack.etl_token())).status == 200
    await stack.idgate.settled()
    durable = stack.idgate.services.audit.durable.seq
    await eventually(lambda: len(shipping_target.messages("node-1")) == durable - 5, "the new records shipped")
    assert [r["seq"] for r in shipping_target.records()] == list(range(6, durable + 1))
    ledger = [json.loads(line) for line in (audit_path.with_name("audit.jsonl.shipping") / "gaps.jsonl")
              .read_text().splitlines()]
    assert [(g["first_seq"], g["last_seq"], g["reason"], g["sink"]) for g in ledger] == [(1, 5, "too_old", "cloudwatch")]
    assert metric(stack, "idgate_audit_ship_gap_records_total", sink="cloudwatch", reason="too_old") == 5


async def test_retention_deletes_a_segment_only_once_every_sink_holds_it_and_an_anchor_vouches_for_it(
        make_stack: Any, shipping_target: ShippingTarget, tmp_path: Path) -> None:
    """No bucket at first: S3 refuses every upload, so with max_segments 1 the rotated segments pile up;
    once the bucket exists they are shipped, anchored, and the next rotations delete them."""
    audit_path = tmp_path / "audit" / "audit.jsonl"
    stack: Stack = await make_stack(audit={**shipping_target.audit_section(audit_path), "rotate_bytes": 2048,
                                           "max_segments": 1})
    token = stack.etl_token()
    for i in range(12):
        assert (await stack.get(f"/v1/orders/{i}", token=token)).status == 200
    await stack.idgate.settled()
    await eventually(lambda: metric(stack, "idgate_audit_ship_failures_total", sink="s3", code="NoSuchBucket") >= 1,
                     "S3 uploads refused")
    kept = segment_files(audit_path)[:-1]
    assert len(kept) >= 3                                     # far more than max_segments: none was shipped
    assert verify_files(segment_files(audit_path)).ok
    shipping_target.create_bucket()
    await eventually(lambda: len([k for k in shipping_target.keys() if k.endswith(".jsonl")]) >= len(kept),
                     "the kept segments shipped", timeout=30)
    # Retention runs after a rotation: keep requests coming until one finds the old segments shipped.
    deadline = asyncio.get_running_loop().time() + 30
    while len(segment_files(audit_path)) > 3:
        assert asyncio.get_running_loop().time() < deadline, "shipped segments never deleted"
        assert (await stack.get("/v1/orders/1", token=token)).status == 200
    shipped = {int(k.rsplit("-", 1)[1].split(".")[0]) for k in shipping_target.keys() if k.endswith(".jsonl")}
    assert all(int(p.name.split(".")[-2]) in shipped for p in kept if not p.exists())
    report = verify_files(segment_files(audit_path))
    assert report.ok and report.starts_after > 0              # the deletion is announced in the chain
