"""Audit shipping against a real moto server as CloudWatch Logs and S3 (issue 11): records arrive in
order, exactly as written; rotated segments land in S3 under their seq range; anchors are stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxy.audit import segment_files
from tests.harness.processes import eventually
from tests.harness.shipping import ShippingTarget
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
