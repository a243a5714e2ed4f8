"""Example DAG: an Airflow task reads and writes DynamoDB with credentials brokered by idgate.

Nothing here mentions credentials: the worker's environment (deploy/airflow/worker.env) points boto3's
container provider at idgate, and `aws_conn_id=None` makes AwsBaseHook use that default chain.  idgate
hands back STS credentials scoped to the rows of this worker's partition (see policies/airflow.yaml).
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from airflow.providers.amazon.aws.hooks.dynamodb import DynamoDBHook

try:  # Airflow 3
    from airflow.sdk import dag, task
except ImportError:  # Airflow 2
    from airflow.decorators import dag, task

TABLE = os.environ.get("ORDERS_TABLE", "orders")
# The policy's leading key is the worker's token subject: the service account's rows only.
PARTITION = os.environ.get("ORDERS_PARTITION", "system:serviceaccount:airflow:airflow-worker")


def record_order(partition: str = PARTITION, table: str = TABLE, order_id: str = "1") -> dict[str, Any]:
    """Write one order and read it back through the Amazon provider's DynamoDBHook."""
    hook = DynamoDBHook(aws_conn_id=None, table_name=table, table_keys=["pk", "sk"])
    hook.write_batch_data([{"pk": partition, "sk": order_id, "status": "new"}])
    item: dict[str, Any] = hook.conn.Table(table).get_item(Key={"pk": partition, "sk": order_id})["Item"]
    return item


@dag(dag_id="orders_via_idgate", schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
     tags=["idgate", "dynamodb"])
def orders_via_idgate() -> None:
    @task
    def write_and_read() -> dict[str, Any]:
        return record_order()

    write_and_read()


orders_via_idgate()
