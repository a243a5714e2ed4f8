"""The example DAG's task (deploy/airflow/dags/orders_via_idgate.py) run for real: Airflow's Amazon
provider DynamoDBHook in a worker-like subprocess, credentials from idgate, tables on moto.

Run with `make test-airflow`.  Not part of `make test` on purpose: apache-airflow-providers-amazon pulls in
Airflow itself (about 375 MB and a minute to install into its own .venv-airflow, kept apart from the
test venv because Airflow pins its own versions of shared libraries).  `make test` covers the same code
path — AwsBaseHook with no connection builds a plain boto3 session whose default chain finds the
container provider — in tests/integration/test_boto3_container_provider.py.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from tests.harness.broker import BrokerStack, worker_env
from tests.harness.paths import DEPLOY, REPO

AIRFLOW_PYTHON = Path(os.environ.get("IDGATE_AIRFLOW_PYTHON", REPO / ".venv-airflow" / "bin" / "python"))
DAGS = DEPLOY / "airflow" / "dags"
RUN_TASK = """
import json
import orders_via_idgate
item = orders_via_idgate.record_order(partition="svc-etl-7", table="orders")
print(json.dumps(item))
"""


async def test_the_example_dags_dynamodb_hook_runs_on_broker_credentials(broker_stack: BrokerStack,
                                                                         tmp_path: Path) -> None:
    assert AIRFLOW_PYTHON.exists(), f"{AIRFLOW_PYTHON} is missing: run `make test-airflow`"
    moto = broker_stack.moto
    moto.create_role("etl")
    moto.create_table("orders")
    token_file = tmp_path / "token"
    token_file.write_text(broker_stack.op_token("svc-etl-7"))
    env = worker_env(tmp_path, f"{broker_stack.credentials_url}?role=etl", token_file, moto.url)
    env["AIRFLOW_HOME"] = str(tmp_path / "airflow")
    env["PYTHONPATH"] = str(DAGS)   # the DAG folder on the import path, as an Airflow worker has it

    process = await asyncio.create_subprocess_exec(
        str(AIRFLOW_PYTHON), "-c", RUN_TASK, env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(120):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()[-3000:]
    assert json.loads(stdout.decode().strip().splitlines()[-1]) == {"pk": "svc-etl-7", "sk": "1", "status": "new"}

    [record] = await broker_stack.credential_decisions()
    assert record["decision"] == "allow" and record["rule"] == "etl-orders"
    [sent] = moto.recorded_sts_calls("AssumeRole")
    statement = json.loads(sent["Policy"])["Statement"][0]
    assert statement["Condition"]["ForAllValues:StringEquals"]["dynamodb:LeadingKeys"] == ["svc-etl-7"]
