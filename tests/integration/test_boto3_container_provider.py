"""End to end, as an Airflow worker would run: a real boto3 in a subprocess whose only AWS settings are
AWS_CONTAINER_CREDENTIALS_FULL_URI (idgate), AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE (a token from the
real OpenID Provider), the DynamoDB endpoint (moto) and the region; no keys in the environment or in
any profile.  It reads and writes a table on moto, then the token file is rotated and the next refresh
is shown to present the new token.

This is also the code path of Airflow's AwsBaseHook with no connection (aws_conn_id=None): the hook
builds a plain boto3 session and the default credential chain finds the container provider.  The
example DAG's DynamoDBHook itself runs against moto in tests/integration/airflow_dag_check.py (`make test-airflow`).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import jwt

from tests.harness.broker import CREDENTIALS_PATH, BrokerStack, worker_env
from tests.harness.paths import HARNESS

# Run by path with -P: the script's folder (the harness, whose moto.py and envoy.py would shadow the real
# packages) stays off the worker's sys.path.
WORKER = HARNESS / "boto3_worker.py"


class Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def step(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        async with asyncio.timeout(60):
            line = await self.process.stdout.readline()
        if not line:
            stderr = await self.process.stderr.read() if self.process.stderr else b""
            raise AssertionError(f"worker exited {await self.process.wait()}: {stderr.decode()[-3000:]}")
        result: dict[str, Any] = json.loads(line)
        return result


def jti(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


async def test_boto3_gets_credentials_from_idgate_and_uses_them_on_moto(broker_stack: BrokerStack,
                                                                        tmp_path: Path) -> None:
    moto = broker_stack.moto
    moto.create_role("etl")
    moto.create_table("orders")
    token_file = tmp_path / "token"
    first_token = broker_stack.op_token("svc-etl-7")
    token_file.write_text(first_token)
    env = worker_env(tmp_path, f"{broker_stack.credentials_url}?role=etl", token_file, moto.url)

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-P", str(WORKER), "orders", "svc-etl-7", env=env, cwd=tmp_path,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    worker = Worker(process)
    try:
        resolved = await worker.step()
        assert resolved["method"] == "container-role"
        assert await worker.step() == {"step": "read", "status": "new"}
        assert await worker.step() == {"step": "ROTATE"}

        second_token = broker_stack.op_token("svc-etl-7")
        assert jti(second_token) != jti(first_token)
        token_file.write_text(second_token)
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        await process.stdin.drain()
        refreshed = await worker.step()
        assert refreshed["status"] == "shipped"
        assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    # What idgate saw: the first fetch with the first token; after the rotation every refresh (botocore,
    # its clock moved, refreshes on each use) presented the new token (its jti) and got the same cached
    # credentials: same caller, same role and session policy, still 30+ minutes on idgate's clock.
    first, *after = await broker_stack.credential_decisions()
    assert after, "botocore refreshed through idgate"
    assert (first["decision"], first["aws"]["token_jti"], first["aws"]["source"]) == ("allow", jti(first_token), "sts")
    assert {(r["decision"], r["aws"]["token_jti"], r["aws"]["source"]) for r in after} == {
        ("allow", jti(second_token), "cache")}
    assert {r["aws"]["access_key_id"] for r in [first, *after]} == {resolved["access_key"], refreshed["access_key"]}
    assert all(r["target"]["path"] == CREDENTIALS_PATH and r["target"]["role"] == "etl" for r in [first, *after])

    # ...and the data boto3 wrote is on moto, in the caller's own partition.
    item = moto.client("dynamodb").get_item(TableName="orders", Key={"pk": {"S": "svc-etl-7"}, "sk": {"S": "1"}})
    assert item["Item"]["status"] == {"S": "shipped"}
