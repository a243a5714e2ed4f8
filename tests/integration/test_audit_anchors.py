"""Signed anchors against a cut or rewritten tail (issue 11): a real idgate ships to moto and anchors
its last record at shutdown; then the newest records are cut from the local files and from S3, or the
last record is rewritten with a recomputed chain.  The chain alone verifies; `idgate audit verify
--anchors` (a subprocess, as an auditor runs it) does not, and names the missing range."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy.audit import segment_files
from proxy.audit.chain import canonical
from proxy.keys import new_private_key_pem
from tests.harness.paths import REPO
from tests.harness.processes import eventually
from tests.harness.shipping import BUCKET, LOG_GROUP, ShippingTarget
from tests.harness.stack import Stack


def verify(*args: str, moto_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null",
               AWS_ENDPOINT_URL_S3=moto_url, AWS_ENDPOINT_URL_CLOUDWATCH_LOGS=moto_url)
    return subprocess.run([sys.executable, "-m", "proxy", "audit", "verify", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


async def shipped_chain(make_stack: Any, target: ShippingTarget, audit_path: Path) -> int:
    """Records from a real idgate, every one shipped and the last one anchored in both sinks; how many."""
    target.create_bucket()
    stack: Stack = await make_stack(audit={**target.audit_section(audit_path), "rotate_bytes": 3000})
    token = stack.etl_token()
    for i in range(16):
        assert (await stack.get(f"/v1/orders/{i}", token=token)).status == 200
    await stack.idgate.settled()
    total = stack.idgate.services.audit.durable.seq
    rotated = segment_files(audit_path)[:-1]
    await eventually(lambda: len([k for k in target.keys() if k.endswith(".jsonl")]) == len(rotated),
                     "every rotated segment in S3")
    await stack.idgate.services.shipper.close()          # as at shutdown: ships the rest, anchors the last record
    assert len(target.messages("node-1")) == total
    # The clean stop rotated the live segment too: S3 holds every record.
    s3_last = max(int(k.rsplit("-", 1)[1].split(".")[0]) for k in target.keys() if k.endswith(".jsonl"))
    assert s3_last == total
    return total


def anchor_seqs(target: ShippingTarget) -> list[int]:
    return [json.loads(base64.urlsafe_b64decode(t.split(".")[1] + "=="))["seq"] for t in target.messages("node-1.anchors")]


async def test_a_tail_cut_locally_and_in_s3_is_found_and_its_range_named(
        make_stack: Any, shipping_target: ShippingTarget, tmp_path: Path) -> None:
    audit_path = tmp_path / "audit" / "audit.jsonl"
    total = await shipped_chain(make_stack, shipping_target, audit_path)
    assert anchor_seqs(shipping_target)[-1] == total
    key = str(shipping_target.anchor_key)
    folder = f"s3://{BUCKET}/audit/node-1/"
    assert verify("--anchors", folder, "--anchor-key", key, str(audit_path), moto_url=shipping_target.moto.url).returncode == 0
    # The intruder cuts the newest records: the live segment and the newest rotated one, here and in S3.
    files = segment_files(audit_path)
    newest_rotated = files[-2]
    cut_after = int(json.loads(newest_rotated.read_bytes().splitlines()[0])["seq"]) - 1
    files[-1].unlink()
    newest_rotated.unlink()
    s3 = shipping_target.moto.client("s3")
    for k in shipping_target.keys():
        if k.endswith(".jsonl") and int(k.rsplit("-", 1)[1].split(".")[0]) > cut_after:
            s3.delete_object(Bucket=BUCKET, Key=k)
    plain = verify(*[str(p) for p in segment_files(audit_path)], moto_url=shipping_target.moto.url)
    assert plain.returncode == 0, plain.stderr                  # the chain alone cannot tell
    missing = f"records seq {cut_after + 1}..{total} are missing"
    for records in ([str(p) for p in segment_files(audit_path)], [folder]):
        found = verify("--anchors", folder, "--anchor-key", key, *records, moto_url=shipping_target.moto.url)
        assert found.returncode == 1, found.stdout + found.stderr
        assert missing in found.stderr and "Traceback" not in found.stderr
        assert "FAILED" in found.stdout
    # CloudWatch, which nobody could cut, still holds the whole chain: it verifies against its anchors.
    stream = f"cloudwatch://{LOG_GROUP}/node-1"
    whole = verify("--anchors", stream, "--anchor-key", key, stream, moto_url=shipping_target.moto.url)
    assert whole.returncode == 0, whole.stderr
    assert f"{total} record(s)" in whole.stdout


async def test_a_rewritten_tail_with_a_recomputed_chain_is_found(
        make_stack: Any, shipping_target: ShippingTarget, tmp_path: Path) -> None:
    audit_path = tmp_path / "audit" / "audit.jsonl"
    total = await shipped_chain(make_stack, shipping_target, audit_path)
    live = [p for p in segment_files(audit_path) if p.stat().st_size][-1]   # the clean stop rotated the live one
    lines = live.read_bytes().splitlines()
    last = json.loads(lines[-1])
    forged = {k: v for k, v in last.items() if k != "hash"}
    forged["client"] = {"addr": "203.0.113.9"}                   # someone else's request, it would say
    digest = hashlib.sha256(forged["prev"].encode() + canonical(forged)).hexdigest()
    lines[-1] = canonical(forged)[:-1] + b',"hash":"' + digest.encode() + b'"}'
    live.write_bytes(b"\n".join(lines) + b"\n")
    files = [str(p) for p in segment_files(audit_path)]
    assert verify(*files, moto_url=shipping_target.moto.url).returncode == 0     # a consistent chain
    found = verify("--anchors", f"s3://{BUCKET}/audit/node-1/", "--anchor-key", str(shipping_target.anchor_key),
                   *files, moto_url=shipping_target.moto.url)
    assert found.returncode == 1
    assert f"record seq {total} is not the record anchor" in found.stderr


@pytest.mark.parametrize("damage", ["another key", "no key", "an anchor dropped"])
async def test_anchors_that_cannot_be_trusted_fail_the_check(make_stack: Any, shipping_target: ShippingTarget,
                                                            tmp_path: Path, damage: str) -> None:
    audit_path = tmp_path / "audit" / "audit.jsonl"
    await shipped_chain(make_stack, shipping_target, audit_path)
    folder = f"s3://{BUCKET}/audit/node-1/"
    key = str(shipping_target.anchor_key)
    files = [str(p) for p in segment_files(audit_path)]
    if damage == "another key":
        other = tmp_path / "other.pem"
        other.write_bytes(new_private_key_pem())
        result = verify("--anchors", folder, "--anchor-key", str(other), *files, moto_url=shipping_target.moto.url)
        assert result.returncode == 1 and "signed by an unknown key" in result.stderr
    elif damage == "no key":
        result = verify("--anchors", folder, *files, moto_url=shipping_target.moto.url)
        assert result.returncode == 2 and "needs the anchor key" in result.stderr
    else:
        anchors = sorted(k for k in shipping_target.keys() if "/anchors/" in k)
        assert len(anchors) >= 3
        shipping_target.moto.client("s3").delete_object(Bucket=BUCKET, Key=anchors[1])
        result = verify("--anchors", folder, "--anchor-key", key, *files, moto_url=shipping_target.moto.url)
        assert result.returncode == 1 and "anchors are missing" in result.stderr
    assert "Traceback" not in result.stderr
