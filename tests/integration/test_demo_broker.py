"""The broker part of `idgate demo`: moto seeded by proxy.dev.local_aws, and the boto3 one-liner the demo
prints, run verbatim in a shell with no AWS keys anywhere, reads the demo table through idgate."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from proxy.dev import local_aws
from proxy.dev.local_aws import LocalAws
from tests.harness.broker import write_broker_config
from tests.harness.processes import HOST, free_port
from tests.harness.servers import local_issuer, running_idgate
from tests.harness.stack import example_policies


async def test_the_printed_one_liner_reads_the_demo_table_through_idgate(tmp_path: Path) -> None:
    aws = LocalAws(HOST, free_port())
    await aws.start(tmp_path / "moto.log")
    try:
        async with local_issuer("idgate-demo") as issuer:
            url = issuer.issuer.issuer_url
            (tmp_path / "examples").mkdir()
            policies = example_policies(tmp_path / "examples", url)
            config = write_broker_config(tmp_path, issuers=[{"issuer": url, "audiences": ["idgate-demo"]}],
                                         policy=(policies / "orders.yaml").read_text(), aws={"sts_endpoint": aws.url})
            async with running_idgate(config, sts_client=aws.sts_client_factory()) as idgate:
                text = local_aws.instructions(aws, url, idgate.url, tmp_path / "token")
                commands = text.split("\n\n")[0].split("\n", 1)[1]   # the two command lines of the first block
                env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
                shell = await asyncio.create_subprocess_exec(
                    "bash", "-euo", "pipefail", "-c", commands, env=env, cwd=tmp_path,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                async with asyncio.timeout(60):
                    out, err = await shell.communicate()
                assert shell.returncode == 0, err.decode()[-2000:]
                assert out.decode().startswith("container-role ")
                assert "'amount': {'N': '42'}" in out.decode() and "'pk': {'S': 'acme'}" in out.decode()
                [record] = [r for r in await idgate.audit_records() if r["surface"] == "credentials"]
                assert record["decision"] == "allow" and record["rule"] == "etl-orders-table"
    finally:
        await aws.stop()
