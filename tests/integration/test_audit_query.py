"""The README's question, "who touched tenant acme's items yesterday?", answered by `idgate audit query` from
the records a real idgate wrote: its DynamoDB gateway between real boto3 workers and moto, for tenant acme,
tenant globex (once asking for acme's item), and an operator's Scan; from the local segments, from an S3
prefix on moto holding them in the shipper's layout, from what idgate's own shipper put in CloudWatch Logs
and S3, and with the keys redacted."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from proxy.audit import segment_files
from proxy.audit.chain import parse_line
from tests.harness.gateway import GatewayFactory, GatewayStack, create_tables
from tests.harness.moto import MotoServer
from tests.harness.processes import eventually
from tests.harness.shipping import BUCKET as SHIPPED_BUCKET, LOG_GROUP, PREFIX, ShippingTarget

REPO = Path(__file__).resolve().parents[2]
BUCKET = "idgate-audit-shipped"


async def idgate_query(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "audit", "query", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(120):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def aws_env(moto: MotoServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
               AWS_ENDPOINT_URL_S3=moto.url, AWS_ENDPOINT_URL_CLOUDWATCH_LOGS=moto.url,
               AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    return env


async def stack_with_segments(make_gateway_stack: GatewayFactory, moto: MotoServer, tmp_path: Path,
                              audit: dict[str, Any] | None = None, **gateway: Any) -> GatewayStack:
    """The gateway stack, its audit rotated every few KB so that the answer spans segments."""
    stack = await make_gateway_stack(gateway=gateway or None, audit={
        "path": str(tmp_path / "audit" / "idgate-audit.jsonl"), **(audit or {}), "rotate_bytes": 6000, "fsync": False})
    for role in ("tenant", "ops"):
        moto.create_role(role)
    create_tables(moto)
    return stack


async def three_callers(stack: GatewayStack) -> None:
    """acme works on its items; globex on its own, then asks for acme's (refused); an operator scans."""
    acme = stack.token_file("acme", "svc-etl-acme", tenant="acme")
    globex = stack.token_file("globex", "svc-etl-globex", tenant="globex")
    ops = stack.token_file("ops", "svc-ops-1", groups=("ops",))
    [own] = await stack.run_worker(acme, "acme", "client_crud", home="acme")
    [theirs] = await stack.run_worker(globex, "globex", "client_crud", home="globex")
    [tried] = await stack.run_worker(globex, "acme", "own_get", home="globex-tries-acme")
    [scanned] = await stack.run_worker(ops, "acme", "scan", home="ops")
    assert own["ok"] and theirs["ok"] and scanned["ok"], (own, theirs, scanned)
    assert tried["code"] == "AccessDeniedException"
    await stack.idgate.settled()


def records_of(jsonl: str) -> list[dict[str, Any]]:
    return [parse_line(line.encode())[0] for line in jsonl.splitlines()]


def day_bounds(audit: Path) -> tuple[str, str]:
    """"Yesterday" as the investigator would type it, taken from the records' own time: from the day of
    the first record to the day after the last (one day, unless the test ran across midnight)."""
    times = [json.loads(line)["ts"] for f in segment_files(audit) for line in f.read_text().splitlines()]
    return times[0][:10], (date.fromisoformat(times[-1][:10]) + timedelta(days=1)).isoformat()


async def test_who_touched_tenant_acmes_items_yesterday(make_gateway_stack: GatewayFactory, moto: MotoServer,
                                                        tmp_path: Path) -> None:
    stack = await stack_with_segments(make_gateway_stack, moto, tmp_path)
    await three_callers(stack)
    audit = stack.idgate.services.config.audit.path
    assert len(segment_files(audit)) >= 3
    since, until = day_bounds(audit)
    question = ("--table", "orders", "--key", "acme", "--since", since, "--until", until)

    status, local, err = await idgate_query(str(audit.parent), *question, "--format", "jsonl")
    assert status == 0, err
    found = records_of(local)
    by_request: dict[str, list[dict[str, Any]]] = {}
    for record in found:
        by_request.setdefault(record["request_id"], []).append(record)
    who = {r["identity"]["sub"] for r in found if r["event"] == "decision"}
    assert who == {"svc-etl-acme", "svc-etl-globex", "svc-ops-1"}          # not globex's work on its own items
    for records in by_request.values():
        decision = records[0]
        assert decision["event"] == "decision"
        if decision["decision"] == "allow":                                  # every allowed call with its outcome
            assert [r["event"] for r in records] == ["decision", "outcome"] and records[1]["dynamodb"]["status"] == 200
        else:                                                                # the refusal: globex asking for acme's item
            assert decision["identity"]["sub"] == "svc-etl-globex" and len(records) == 1
            assert decision["dynamodb"]["denied"]["keys"] == ["acme"]
    acme_calls = [r for r in by_request.values() if r[0]["identity"]["sub"] == "svc-etl-acme"]
    assert sorted(r[0]["dynamodb"]["operation"] for r in acme_calls) == \
        ["DeleteItem", "GetItem", "PutItem", "PutItem", "UpdateItem"]
    [scan] = [r for r in by_request.values() if r[0]["identity"]["sub"] == "svc-ops-1"]
    assert scan[0]["dynamodb"]["touches"][0]["keys"] == []                   # found by what the Scan returned
    assert ["orders", "acme", "1"] in scan[1]["dynamodb"]["returned"]["keys"]

    # The same question as a table, for a person.
    status, table, _ = await idgate_query(str(audit.parent), *question)
    header, *rows = table.splitlines()
    assert status == 0 and len(rows) == len(found)
    assert any("svc-ops-1" in row and "Scan orders" in row and "acme" in row for row in rows)
    assert any("svc-etl-globex" in row and "deny:leading_key_not_granted" in row for row in rows)

    # The day before holds nothing; a window from the operator's Scan on holds only the Scan.
    assert (await idgate_query(str(audit.parent), *question[:4], "--until", since))[0] == 1
    status, out, _ = await idgate_query(str(audit.parent), *question[:4], "--since", scan[0]["ts"], "--format", "jsonl")
    assert [r["request_id"] for r in records_of(out)] == [scan[0]["request_id"]] * 2

    # From S3, where the shipper puts the segments: the same answer, and the same once with both sources.
    s3 = moto.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    instance = found[0].get("instance", audit.stem)
    for segment in segment_files(audit):
        lines = segment.read_bytes().splitlines()
        if not lines:                                # the live segment, right after a rotation
            continue
        first, last = (json.loads(lines[i])["seq"] for i in (0, -1))
        s3.put_object(Bucket=BUCKET, Key=f"prod/{instance}/{first:012d}-{last:012d}.jsonl", Body=segment.read_bytes())
    s3.put_object(Bucket=BUCKET, Key=f"prod/{instance}/anchors/{last:012d}.json", Body=b'{"signature": "..."}')
    status, remote, err = await idgate_query(f"s3://{BUCKET}/prod/", *question, "--format", "jsonl", env=aws_env(moto))
    assert status == 0, err
    assert remote == local
    status, both, err = await idgate_query(str(audit), f"s3://{BUCKET}/prod/", *question, "--format", "jsonl",
                                           env=aws_env(moto))
    assert both == remote and "duplicate(s) dropped" in err


async def test_redacted_keys_are_found_by_the_plain_value_with_the_configuration(
        make_gateway_stack: GatewayFactory, moto: MotoServer, tmp_path: Path) -> None:
    stack = await stack_with_segments(make_gateway_stack, moto, tmp_path, redact_keys=True)
    await three_callers(stack)
    audit = stack.idgate.services.config.audit.path

    status, out, err = await idgate_query(str(audit), "--key", "acme")
    assert (status, out) == (1, "")
    assert "hold partition keys as HMACs (aws.gateway.redact_keys): give -c idgate.yaml" in err

    status, out, err = await idgate_query(str(audit), "--key", "acme", "-c", str(stack.idgate.config_path),
                                          "--format", "jsonl")
    assert status == 0, err
    found = records_of(out)
    assert {r["identity"]["sub"] for r in found if r["event"] == "decision"} == \
        {"svc-etl-acme", "svc-etl-globex", "svc-ops-1"}
    assert '"acme"' not in out                                               # the records hold HMACs only
    status, table, _ = await idgate_query(str(audit), "--key", "acme", "-c", str(stack.idgate.config_path))
    keys = [re.split(r" {2,}", row)[-1] for row in table.splitlines()[1:]]
    assert len(keys) == len(found) and keys.count("-") == 1                # the Scan's decision names no key
    assert all("acme" in cell.split(",") for cell in keys if cell != "-")   # shown as typed, not as its HMAC


async def test_the_same_answer_from_what_idgates_shipper_put_in_cloudwatch_and_s3(
        make_gateway_stack: GatewayFactory, moto: MotoServer, shipping_target: ShippingTarget, tmp_path: Path) -> None:
    audit_path = tmp_path / "audit" / "idgate-audit.jsonl"
    shipping_target.create_bucket()
    # rotate_seconds: the last segment rotates too once the callers are done, so S3 gets every record.
    stack = await stack_with_segments(make_gateway_stack, moto, tmp_path,
                                      audit={**shipping_target.audit_section(audit_path), "rotate_seconds": 1})
    await three_callers(stack)
    last = stack.idgate.services.audit.durable.seq

    def shipped_to_s3() -> int:
        names = [k.rpartition("/")[2] for k in shipping_target.keys() if "/anchors/" not in k]
        return max((int(n.removesuffix(".jsonl").partition("-")[2]) for n in names), default=0)

    await eventually(lambda: len(shipping_target.messages("node-1")) >= last, "every record in CloudWatch", timeout=30)
    # Once S3 has the last record, its segment has rotated and nothing more rotates: the files hold still.
    await eventually(lambda: shipped_to_s3() >= last, "every record in S3", timeout=30)
    question = ("--table", "orders", "--key", "acme", "--format", "jsonl")

    status, local, err = await idgate_query(str(audit_path), *question)
    assert status == 0, err
    for source in (f"cloudwatch://{LOG_GROUP}/node-1", f"s3://{SHIPPED_BUCKET}/{PREFIX}"):
        status, remote, err = await idgate_query(source, *question, env=aws_env(moto))
        assert (status, remote) == (0, local), (source, err)
    status, every, err = await idgate_query(str(audit_path), f"cloudwatch://{LOG_GROUP}/",
                                            f"s3://{SHIPPED_BUCKET}/{PREFIX}", *question, env=aws_env(moto))
    assert every == local and f"{2 * last} duplicate(s) dropped" in err, err
