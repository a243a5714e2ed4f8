"""The AWS part of `idgate demo`: moto seeded by proxy.dev.local_aws, and the boto3 one-liners the demo
prints, run verbatim in a shell with no AWS keys anywhere: the demo table read through idgate's broker,
then through its DynamoDB gateway (acme's item), and another tenant's item refused by the gateway."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import boto3
import pytest
import yaml

from proxy.dev import local_aws
from proxy.dev.local_aws import LocalAws
from tests.harness.broker import write_broker_config
from tests.harness.processes import HOST, eventually, free_port
from tests.harness.servers import local_issuer, running_idgate
from tests.harness.stack import example_policies


async def run(commands: str, cwd: Path) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    shell = await asyncio.create_subprocess_exec(
        "bash", "-euo", "pipefail", "-c", commands, env=env, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await shell.communicate()
    assert shell.returncode is not None
    return shell.returncode, out.decode(), err.decode()


def _cloudwatch_holds(url: str, records: int) -> bool:
    logs = boto3.session.Session(aws_access_key_id="demo", aws_secret_access_key="demo",
                                 region_name=local_aws.REGION).client("logs", endpoint_url=url)
    try:
        counts = [len(logs.get_log_events(logGroupName=local_aws.AUDIT_LOG_GROUP, logStreamName=stream,
                                          startFromHead=True)["events"])
                  for stream in (local_aws.AUDIT_INSTANCE, local_aws.AUDIT_INSTANCE + ".anchors")]
    except logs.exceptions.ResourceNotFoundException:
        return False
    return counts[0] >= records and counts[1] >= 1


async def test_the_printed_one_liners_read_the_demo_table_through_idgate(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    aws = LocalAws(HOST, free_port())
    await aws.start(tmp_path / "moto.log")
    for name, value in (("AWS_ACCESS_KEY_ID", "demo"), ("AWS_SECRET_ACCESS_KEY", "demo"),
                        ("AWS_DEFAULT_REGION", local_aws.REGION)):
        monkeypatch.setenv(name, value)              # what the demo sets for its shipper (use_demo_keys)
    try:
        async with local_issuer("idgate-demo") as issuer:
            url = issuer.issuer.issuer_url
            (tmp_path / "examples").mkdir()
            policies = example_policies(tmp_path / "examples", url)
            ring = local_aws.write_key_ring(tmp_path / "gateway-keys.json")
            anchor_key = local_aws.write_anchor_key(tmp_path / "anchor-key.pem")
            shipping = yaml.safe_load(textwrap.dedent(local_aws.audit_shipping_yaml(aws, anchor_key)))
            config = write_broker_config(tmp_path, issuers=[{"issuer": url, "audiences": ["idgate-demo"]}],
                                         policy=(policies / "orders.yaml").read_text(), aws={
                                             "sts_endpoint": aws.url,
                                             "gateway": {"enabled": True, "key_file": str(ring), "endpoint": aws.url}},
                                         audit={"path": str(tmp_path / "audit" / "audit.jsonl"), **shipping})
            async with running_idgate(config, sts_client=aws.sts_client_factory()) as idgate:
                printed = local_aws.instructions(aws, url, idgate.url, tmp_path / "token", anchor_key)
                blocks = [b.split("\n", 1)[1] for b in printed.split("\n\n")]      # each block's commands, no title
                status, out, err = await run(blocks[0], tmp_path)                 # the broker
                assert status == 0, err[-2000:]
                assert out.startswith("container-role ")
                assert "'amount': {'N': '42'}" in out and "'pk': {'S': 'acme'}" in out
                [record] = [r for r in await idgate.audit_records() if r["surface"] == "credentials"]
                assert record["decision"] == "allow" and record["rule"] == "etl-orders-table"

                status, out, err = await run(blocks[1], tmp_path)                 # the gateway, acme's item
                assert status == 0, err[-2000:]
                assert "'amount': {'N': '42'}" in out
                status, out, err = await run(blocks[2], tmp_path)                 # another tenant's item
                assert status != 0 and "AccessDeniedException" in err
                gateway = [r for r in await idgate.audit_records() if r["surface"] == "dynamodb"]
                assert [(r["event"], r.get("decision")) for r in gateway] == [
                    ("decision", "allow"), ("outcome", None), ("decision", "deny")]

                # Audit shipping: once CloudWatch holds every record and an anchor, the printed
                # commands verify the shipped chain against its anchors and find acme's item.
                durable = idgate.services.audit.durable.seq
                await eventually(lambda: _cloudwatch_holds(aws.url, durable), "every record and an anchor in CloudWatch")
                (shipping,) = [b for b in blocks if "audit verify" in b]
                status, out, err = await run(shipping, tmp_path)
                assert status == 0, out + err
                assert "audit verify: ok" in out and "anchor(s)" in out
                assert "GetItem orders" in out and "acme" in out and "globex" not in out
    finally:
        await aws.stop()
