"""A worker as Airflow runs one in gateway mode: plain boto3, credentials only from the container provider
(idgate's gateway credentials), AWS_ENDPOINT_URL_DYNAMODB pointing at idgate.  Run as a subprocess by
tests/harness/gateway.py: `gateway_worker.py TENANT STEP...`; prints one JSON line per step:
{"step", "ok", "code" (the AWS error code of a refusal), "status", "data"}."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import boto3
from boto3.dynamodb.conditions import Attr, Key
from botocore.config import Config
from botocore.exceptions import ClientError

TENANT = sys.argv[1]
OTHER = "other-" + TENANT
SESSION = boto3.session.Session()
# No retries: a refusal must be seen as the one answer idgate gave.
CLIENT = SESSION.client("dynamodb", config=Config(retries={"total_max_attempts": 1}))
RESOURCE = SESSION.resource("dynamodb", config=Config(retries={"total_max_attempts": 1}))
ORDERS = RESOURCE.Table("orders")


def s(value: str) -> dict[str, str]:
    return {"S": value}


def credentials() -> Any:
    frozen = SESSION.get_credentials().get_frozen_credentials()
    return {"method": SESSION.get_credentials().method, "access_key": frozen.access_key,
            "token_chars": len(frozen.token or "")}


def client_crud() -> Any:
    CLIENT.put_item(TableName="orders", Item={"pk": s(TENANT), "sk": s("1"), "status": s("new"), "amount": {"N": "5"}})
    CLIENT.update_item(TableName="orders", Key={"pk": s(TENANT), "sk": s("1")}, UpdateExpression="SET #s = :s",
                       ExpressionAttributeNames={"#s": "status"}, ExpressionAttributeValues={":s": s("shipped")})
    item = CLIENT.get_item(TableName="orders", Key={"pk": s(TENANT), "sk": s("1")},
                           ProjectionExpression="pk, #s", ExpressionAttributeNames={"#s": "status"})["Item"]
    CLIENT.put_item(TableName="orders", Item={"pk": s(TENANT), "sk": s("2")})
    CLIENT.delete_item(TableName="orders", Key={"pk": s(TENANT), "sk": s("2")})
    return item["status"]["S"]


def resource_batch_and_pages() -> Any:
    ORDERS.put_item(Item={"pk": TENANT, "sk": "r", "status": "new"})
    got = ORDERS.get_item(Key={"pk": TENANT, "sk": "r"})["Item"]["status"]
    with ORDERS.batch_writer() as batch:        # 30 puts: a BatchWriteItem of 25, then one of 5
        for i in range(30):
            batch.put_item(Item={"pk": TENANT, "sk": f"b{i:02d}", "status": "batched"})
    pages, items, start = 0, 0, None
    while True:
        kwargs: dict[str, Any] = {"KeyConditionExpression": Key("pk").eq(TENANT) & Key("sk").begins_with("b"),
                                  "Limit": 7}
        if start:
            kwargs["ExclusiveStartKey"] = start
        page = ORDERS.query(**kwargs)
        pages, items = pages + 1, items + len(page["Items"])
        start = page.get("LastEvaluatedKey")
        if not start:
            break
    return {"get": got, "pages": pages, "items": items}


def transactions() -> Any:
    CLIENT.transact_write_items(TransactItems=[
        {"Put": {"TableName": "orders", "Item": {"pk": s(TENANT), "sk": s("t1"), "status": s("new")}}},
        {"Update": {"TableName": "orders", "Key": {"pk": s(TENANT), "sk": s("1")},
                    "UpdateExpression": "SET amount = :a", "ExpressionAttributeValues": {":a": {"N": "9"}}}},
        {"ConditionCheck": {"TableName": "orders", "Key": {"pk": s(TENANT), "sk": s("r")},
                            "ConditionExpression": "attribute_exists(pk)"}},
    ])
    got = CLIENT.transact_get_items(TransactItems=[
        {"Get": {"TableName": "orders", "Key": {"pk": s(TENANT), "sk": s("t1")}}}])
    return got["Responses"][0]["Item"]["status"]["S"]


def partiql() -> Any:
    # Literals where moto's PartiQL parser takes no `?` (INSERT values, DELETE's WHERE); DynamoDB takes both.
    CLIENT.execute_statement(Statement=f"INSERT INTO \"orders\" VALUE {{'pk': '{TENANT}', 'sk': 'p1', 'status': 'new'}}")
    rows = CLIENT.execute_statement(Statement='SELECT * FROM "orders" WHERE pk = ? AND sk = ?',
                                    Parameters=[s(TENANT), s("p1")])["Items"]
    CLIENT.execute_statement(Statement="UPDATE orders SET status = 'done' WHERE pk = ? AND sk = 'p1'",
                             Parameters=[s(TENANT)])
    batch = CLIENT.batch_execute_statement(Statements=[
        {"Statement": "SELECT status FROM orders WHERE pk = ? AND sk = 'p1'", "Parameters": [s(TENANT)]}])
    CLIENT.execute_transaction(TransactStatements=[
        {"Statement": f"DELETE FROM orders WHERE pk = '{TENANT}' AND sk = 'p1'"}])
    return {"rows": len(rows), "batch_status": batch["Responses"][0]["Item"]["status"]["S"]}


def lsi_query() -> Any:
    return CLIENT.query(TableName="orders", IndexName="by-sk", KeyConditionExpression="pk = :p",
                        ExpressionAttributeValues={":p": s(TENANT)})["Count"]


def invoices_named_columns() -> Any:
    total = {"#t": "total"}                     # `total` is a reserved word
    CLIENT.update_item(TableName="invoices", Key={"pk": s(TENANT), "sk": s("i1")}, UpdateExpression="SET #t = :t",
                       ExpressionAttributeNames=total, ExpressionAttributeValues={":t": {"N": "12"}})
    item = CLIENT.get_item(TableName="invoices", Key={"pk": s(TENANT), "sk": s("i1")},
                           ProjectionExpression="pk, sk, #t", ExpressionAttributeNames=total)["Item"]
    return item["total"]["N"]


def conditional_put_fails() -> Any:
    """DynamoDB's own refusal (the item exists), which idgate passes through unchanged."""
    item = {"pk": s(TENANT), "sk": s("cond")}
    CLIENT.put_item(TableName="orders", Item=item)
    return CLIENT.put_item(TableName="orders", Item=item, ConditionExpression="attribute_not_exists(pk)")


def big_page() -> Any:
    """An answer of about 300 KB (its outcome record is read off the event loop)."""
    with ORDERS.batch_writer() as batch:
        for i in range(15):
            batch.put_item(Item={"pk": TENANT, "sk": f"big{i:02d}", "blob": "x" * 20000})
    return ORDERS.query(KeyConditionExpression=Key("pk").eq(TENANT) & Key("sk").begins_with("big"))["Count"]


def own_get() -> Any:
    return "Item" in CLIENT.get_item(TableName="orders", Key={"pk": s(TENANT), "sk": s("1")})


# --- each of these must be refused ---------------------------------------------------------------------

def other_get() -> Any:
    return CLIENT.get_item(TableName="orders", Key={"pk": s(OTHER), "sk": s("1")})


def other_batch_write() -> Any:
    return CLIENT.batch_write_item(RequestItems={"orders": [
        {"PutRequest": {"Item": {"pk": s(TENANT), "sk": s("mixed")}}},
        {"PutRequest": {"Item": {"pk": s(OTHER), "sk": s("mixed")}}}]})


def own_mixed_written() -> Any:
    """After other_batch_write: the tenant's own half of the refused batch must not exist."""
    return "Item" in CLIENT.get_item(TableName="orders", Key={"pk": s(TENANT), "sk": s("mixed")})


def other_batch_get() -> Any:
    return CLIENT.batch_get_item(RequestItems={"orders": {"Keys": [
        {"pk": s(TENANT), "sk": s("1")}, {"pk": s(OTHER), "sk": s("1")}]}})


def other_transaction() -> Any:
    return CLIENT.transact_write_items(TransactItems=[
        {"Put": {"TableName": "orders", "Item": {"pk": s(TENANT), "sk": s("tx")}}},
        {"Delete": {"TableName": "orders", "Key": {"pk": s(OTHER), "sk": s("1")}}}])


def other_condition_check() -> Any:
    return CLIENT.transact_write_items(TransactItems=[
        {"Put": {"TableName": "orders", "Item": {"pk": s(TENANT), "sk": s("tx")}}},
        {"ConditionCheck": {"TableName": "orders", "Key": {"pk": s(OTHER), "sk": s("1")},
                            "ConditionExpression": "attribute_exists(pk)"}}])


def other_partiql() -> Any:
    return CLIENT.execute_statement(Statement='SELECT * FROM "orders" WHERE pk = ?', Parameters=[s(OTHER)])


def other_partiql_transaction() -> Any:
    return CLIENT.execute_transaction(TransactStatements=[
        {"Statement": "SELECT * FROM orders WHERE pk = ? AND sk = '1'", "Parameters": [s(TENANT)]},
        {"Statement": "UPDATE orders SET status = 'x' WHERE pk = ? AND sk = '1'", "Parameters": [s(OTHER)]}])


def forbidden_table_quoted() -> Any:
    return CLIENT.execute_statement(Statement='SELECT * FROM "secrets" WHERE pk = ?', Parameters=[s(TENANT)])


def forbidden_table_arn() -> Any:
    return CLIENT.execute_statement(
        Statement='SELECT * FROM "arn:aws:dynamodb:us-east-1:123456789012:table/secrets" WHERE pk = ?',
        Parameters=[s(TENANT)])


def scan() -> Any:
    return CLIENT.scan(TableName="orders")


def gsi_query() -> Any:
    return CLIENT.query(TableName="orders", IndexName="by-status", KeyConditionExpression="#s = :s",
                        ExpressionAttributeNames={"#s": "status"}, ExpressionAttributeValues={":s": s("new")})


def key_in_filter() -> Any:
    """The other tenant in the key condition, the tenant's own key only in the filter."""
    return ORDERS.query(KeyConditionExpression=Key("pk").eq(OTHER), FilterExpression=Attr("pk").eq(TENANT))


def invoices_all_columns() -> Any:
    return CLIENT.get_item(TableName="invoices", Key={"pk": s(TENANT), "sk": s("i1")})


def invoices_whole_put() -> Any:
    return CLIENT.put_item(TableName="invoices", Item={"pk": s(TENANT), "sk": s("i2"), "total": {"N": "1"}})


def invoices_hidden_column() -> Any:
    """A forbidden attribute behind an expression attribute name."""
    return CLIENT.get_item(TableName="invoices", Key={"pk": s(TENANT), "sk": s("i1")},
                           ProjectionExpression="pk, #x", ExpressionAttributeNames={"#x": "secret"})


def secrets_get() -> Any:
    return CLIENT.get_item(TableName="secrets", Key={"pk": s(TENANT), "sk": s("1")})


def describe_orders() -> Any:
    return CLIENT.describe_table(TableName="orders")["Table"]["TableName"]


def list_tables() -> Any:
    return CLIENT.list_tables()


def ops_scan() -> Any:
    return CLIENT.scan(TableName="orders", Select="COUNT")["Count"]


STEPS: dict[str, Callable[[], Any]] = {f.__name__: f for f in (
    credentials, client_crud, resource_batch_and_pages, transactions, partiql, lsi_query, invoices_named_columns,
    other_get, other_batch_write, own_mixed_written, other_batch_get, other_transaction, other_condition_check,
    other_partiql, other_partiql_transaction, forbidden_table_quoted, forbidden_table_arn, scan, gsi_query,
    key_in_filter, invoices_all_columns, invoices_whole_put, invoices_hidden_column, secrets_get, describe_orders,
    list_tables, ops_scan, conditional_put_fails, own_get, big_page)}


def main() -> None:
    for name in sys.argv[2:]:
        try:
            data = STEPS[name]()
        except ClientError as exc:
            print(json.dumps({"step": name, "ok": False, "code": exc.response["Error"]["Code"],
                              "status": exc.response["ResponseMetadata"]["HTTPStatusCode"],
                              "message": exc.response["Error"].get("Message", "")}), flush=True)
        else:
            print(json.dumps({"step": name, "ok": True, "data": data}, default=str), flush=True)


if __name__ == "__main__":
    main()
