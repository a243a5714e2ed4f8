"""DynamoDB calls read strictly and turned into touches (proxy.aws.dynamodb.calls, .touches)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.aws.dynamodb.calls import TableNamer, decode, operation
from proxy.aws.dynamodb.touches import KeySchema, touches
from proxy.core.errors import AccessDenied, BadRequest
from proxy.core.model import Touch
from proxy.core.reasons import Reason

NAMER = TableNamer("aws", "us-east-1", "123456789012")
SCHEMAS = {
    "orders": KeySchema("pk", "sk", {"by-sk": ("pk", "sk2"), "by-status": ("status", None)}),
    "invoices": KeySchema("id"),
}


def s(value: str) -> dict[str, str]:
    return {"S": value}


def touched(op: str, payload: dict[str, Any] | str) -> tuple[Touch, ...]:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    call = decode(op, body.encode(), NAMER)
    return touches(call, {t: SCHEMAS[t] for t in call.tables}, NAMER)


def refused(op: str, payload: dict[str, Any] | str) -> BadRequest | AccessDenied:
    with pytest.raises((BadRequest, AccessDenied)) as caught:
        touched(op, payload)
    assert isinstance(caught.value, (BadRequest, AccessDenied))
    return caught.value


# --- the operation and the body ---------------------------------------------------------------------------

@pytest.mark.parametrize("target, reason", [
    (None, Reason.UNKNOWN_OPERATION), ("", Reason.UNKNOWN_OPERATION), ("DynamoDB_20120810.Nope", Reason.UNKNOWN_OPERATION),
    ("DynamoDB_20111205.GetItem", Reason.UNKNOWN_OPERATION), ("dynamodb_20120810.GetItem", Reason.UNKNOWN_OPERATION),
    ("DynamoDB_20120810.getitem", Reason.UNKNOWN_OPERATION),
    ("DynamoDB_20120810.DeleteTable", Reason.ACTION_NOT_GRANTED),     # control plane: denied by name
    ("DynamoDB_20120810.ListTables", Reason.ACTION_NOT_GRANTED),
])
def test_operations_idgate_does_not_serve(target: str | None, reason: Reason) -> None:
    with pytest.raises((BadRequest, AccessDenied)) as caught:
        operation(target)
    assert caught.value.reason is reason


@pytest.mark.parametrize("body", [
    b"", b"[]", b'"x"', b"{", b'{"TableName": NaN}', b"\xff\xfe{}", "{}".encode("utf-16"),
    b'{"TableName":"orders","TableName":"secrets","Key":{"pk":{"S":"a"}}}',     # duplicate keys, either wins
    b'{"TableName":"orders","Key":{"pk":{"S":"a"},"pk":{"S":"b"}}}',
    b"[" * 100000,
])
def test_bodies_that_are_not_one_unambiguous_json_object(body: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        decode("GetItem", body, NAMER)
    assert caught.value.reason is Reason.MALFORMED_JSON


@pytest.mark.parametrize("payload", [
    {"TableName": "orders", "Key": {"pk": s("a")}, "AttributesToGet": ["pk"]},        # legacy
    {"TableName": "orders", "Key": {"pk": s("a")}, "tablename": "secrets"},           # unknown (a case trick)
    {"TableName": "orders", "Key": {"pk": s("a")}, "Unknown": 1},
    {"TableName": ["orders"], "Key": {"pk": s("a")}},
    {"TableName": "or", "Key": {"pk": s("a")}},
    {"TableName": "orders/x", "Key": {"pk": s("a")}},
    {"TableName": "arn:aws:dynamodb:us-east-1:123456789012:table/orders/index/by-sk", "Key": {"pk": s("a")}},
])
def test_parameters_outside_what_idgate_reads(payload: dict[str, Any]) -> None:
    assert refused("GetItem", payload).reason is Reason.INVALID_DYNAMODB_REQUEST


@pytest.mark.parametrize("arn", [
    "arn:aws:dynamodb:us-east-1:999999999999:table/orders",
    "arn:aws:dynamodb:eu-west-1:123456789012:table/orders",
    "arn:aws-cn:dynamodb:us-east-1:123456789012:table/orders",
])
def test_table_arns_of_another_account_region_or_partition(arn: str) -> None:
    assert refused("GetItem", {"TableName": arn, "Key": {"pk": s("a"), "sk": s("1")}}).reason is Reason.FOREIGN_TABLE


def test_own_table_arn_is_the_table() -> None:
    (touch,) = touched("GetItem", {"TableName": "arn:aws:dynamodb:us-east-1:123456789012:table/orders",
                                   "Key": {"pk": s("a"), "sk": s("1")}})
    assert touch.table == "orders"


# --- single items ------------------------------------------------------------------------------------------

def test_get_item_with_and_without_projection() -> None:
    (everything,) = touched("GetItem", {"TableName": "orders", "Key": {"pk": s("acme"), "sk": s("1")}})
    assert everything == Touch("orders", None, "GetItem", ("acme",), None)
    (named,) = touched("GetItem", {"TableName": "orders", "Key": {"pk": s("acme"), "sk": s("1")},
                                   "ProjectionExpression": "#s, a.b, c[1]", "ExpressionAttributeNames": {"#s": "status"}})
    assert named.attributes == frozenset({"pk", "sk", "status", "a", "c"})


def test_an_expression_name_holding_a_dot_is_one_attribute() -> None:
    (touch,) = touched("GetItem", {"TableName": "orders", "Key": {"pk": s("a"), "sk": s("1")},
                                   "ProjectionExpression": "#n", "ExpressionAttributeNames": {"#n": "secret.x"}})
    assert touch.attributes == frozenset({"pk", "sk", "secret.x"})


def test_writes() -> None:
    (put,) = touched("PutItem", {"TableName": "orders", "Item": {"pk": s("a"), "sk": s("1"), "x": s("v")},
                                 "ConditionExpression": "attribute_not_exists(#y)", "ExpressionAttributeNames": {"#y": "y"}})
    assert put == Touch("orders", None, "PutItem", ("a",), frozenset({"pk", "sk", "x", "y"}), whole_item=True)
    (update,) = touched("UpdateItem", {"TableName": "orders", "Key": {"pk": s("a"), "sk": s("1")},
                                       "UpdateExpression": "SET total = total + :n REMOVE old",
                                       "ExpressionAttributeValues": {":n": {"N": "1"}}, "ReturnValues": "UPDATED_NEW"})
    assert update.attributes == frozenset({"pk", "sk", "total", "old"}) and not update.whole_item
    (all_new,) = touched("UpdateItem", {"TableName": "orders", "Key": {"pk": s("a"), "sk": s("1")},
                                        "UpdateExpression": "SET x = :n", "ExpressionAttributeValues": {":n": s("v")},
                                        "ReturnValues": "ALL_NEW"})
    assert all_new.attributes is None
    (delete,) = touched("DeleteItem", {"TableName": "orders", "Key": {"pk": s("a"), "sk": s("1")},
                                       "ReturnValuesOnConditionCheckFailure": "ALL_OLD"})
    assert delete.whole_item and delete.attributes is None


@pytest.mark.parametrize("key", [{"sk": s("1")}, {"pk": {"S": "a", "N": "1"}, "sk": s("1")}, {"pk": {"L": []}},
                                 {"pk": {"BOOL": True}}, {"pk": {"S": 1}}, {}, []])
def test_keys_without_a_usable_partition_key(key: Any) -> None:
    assert refused("GetItem", {"TableName": "orders", "Key": key}).reason is Reason.INVALID_DYNAMODB_REQUEST


# --- queries and scans --------------------------------------------------------------------------------------

def test_query_takes_its_key_from_the_key_condition_only() -> None:
    (touch,) = touched("Query", {"TableName": "orders", "KeyConditionExpression": "#p = :p AND begins_with(sk, :s)",
                                 "FilterExpression": "pk = :own", "ExpressionAttributeNames": {"#p": "pk"},
                                 "ExpressionAttributeValues": {":p": s("other"), ":s": s("b"), ":own": s("acme")}})
    assert touch.keys == ("other",)
    assert touch.attributes is None     # no projection: every attribute


@pytest.mark.parametrize("payload", [
    {"TableName": "orders", "FilterExpression": "pk = :p", "ExpressionAttributeValues": {":p": s("a")}},
    {"TableName": "orders", "KeyConditionExpression": "pk = :p OR pk = :q",
     "ExpressionAttributeValues": {":p": s("a"), ":q": s("b")}},
    {"TableName": "orders", "KeyConditionExpression": "pk = :missing", "ExpressionAttributeValues": {}},
    {"TableName": "orders", "KeyConditionExpression": "#p = :p", "ExpressionAttributeValues": {":p": s("a")}},
    {"TableName": "orders", "IndexName": "nope", "KeyConditionExpression": "pk = :p",
     "ExpressionAttributeValues": {":p": s("a")}},
    {"TableName": "orders", "KeyConditionExpression": "pk = :p", "Select": "EVERYTHING",
     "ExpressionAttributeValues": {":p": s("a")}},
])
def test_queries_idgate_cannot_bound(payload: dict[str, Any]) -> None:
    assert refused("Query", payload).reason is Reason.INVALID_DYNAMODB_REQUEST


def test_index_queries_know_whether_the_index_has_the_tables_partition_key() -> None:
    (lsi,) = touched("Query", {"TableName": "orders", "IndexName": "by-sk", "KeyConditionExpression": "pk = :p",
                               "ExpressionAttributeValues": {":p": s("a")}, "Select": "COUNT"})
    assert lsi.mapped and lsi.index == "by-sk" and lsi.attributes == frozenset({"pk"})
    (gsi,) = touched("Query", {"TableName": "orders", "IndexName": "by-status", "KeyConditionExpression": "#s = :s",
                               "ExpressionAttributeNames": {"#s": "status"}, "ExpressionAttributeValues": {":s": s("new")}})
    assert not gsi.mapped and gsi.keys == ("new",)


def test_scan_has_no_keys() -> None:
    (scan,) = touched("Scan", {"TableName": "orders", "ProjectionExpression": "pk"})
    assert scan == Touch("orders", None, "Scan", (), frozenset({"pk"}))


# --- batches, transactions, PartiQL ---------------------------------------------------------------------------

def test_batches_are_one_touch_per_table_with_every_key() -> None:
    got = touched("BatchGetItem", {"RequestItems": {
        "orders": {"Keys": [{"pk": s("a"), "sk": s("1")}, {"pk": s("b"), "sk": s("1")}]},
        "invoices": {"Keys": [{"id": s("a")}], "ProjectionExpression": "id"}}})
    assert [(t.table, t.keys, t.attributes) for t in got] == [("orders", ("a", "b"), None),
                                                            ("invoices", ("a",), frozenset({"id"}))]
    (write,) = touched("BatchWriteItem", {"RequestItems": {"orders": [
        {"PutRequest": {"Item": {"pk": s("a"), "sk": s("1")}}}, {"DeleteRequest": {"Key": {"pk": s("c"), "sk": s("1")}}}]}})
    assert write.keys == ("a", "c") and write.whole_item


@pytest.mark.parametrize("element", [
    {"PutRequest": {"Item": {"pk": s("a")}}, "DeleteRequest": {"Key": {"pk": s("b")}}},
    {"UpdateRequest": {"Key": {"pk": s("a")}}},
    {"PutRequest": {"Item": {"pk": s("a")}, "Extra": 1}},
])
def test_batch_write_elements_hold_exactly_one_known_request(element: dict[str, Any]) -> None:
    assert refused("BatchWriteItem", {"RequestItems": {"orders": [element]}}).reason is Reason.INVALID_DYNAMODB_REQUEST


def test_transactions_are_one_touch_per_element() -> None:
    got = touched("TransactWriteItems", {"TransactItems": [
        {"Put": {"TableName": "orders", "Item": {"pk": s("a"), "sk": s("1")}}},
        {"ConditionCheck": {"TableName": "invoices", "Key": {"id": s("b")}, "ConditionExpression": "attribute_exists(id)"}},
        {"Update": {"TableName": "orders", "Key": {"pk": s("c"), "sk": s("1")}, "UpdateExpression": "REMOVE x"}},
        {"Delete": {"TableName": "orders", "Key": {"pk": s("d"), "sk": s("1")}}}]})
    assert [(t.action, t.table, t.keys) for t in got] == [
        ("PutItem", "orders", ("a",)), ("ConditionCheckItem", "invoices", ("b",)),
        ("UpdateItem", "orders", ("c",)), ("DeleteItem", "orders", ("d",))]


def test_partiql_statements() -> None:
    (select,) = touched("ExecuteStatement", {"Statement": 'SELECT a FROM "orders" WHERE pk = ? AND sk = ?',
                                             "Parameters": [s("acme"), s("1")]})
    assert select == Touch("orders", None, "PartiQLSelect", ("acme",), frozenset({"a", "pk", "sk"}))
    (scan,) = touched("ExecuteStatement", {"Statement": "SELECT * FROM orders WHERE pk = 'a' OR pk = 'b'"})
    assert scan.keys == () and scan.attributes is None
    got = touched("ExecuteTransaction", {"TransactStatements": [
        {"Statement": "INSERT INTO orders VALUE {'pk': ?, 'sk': '1'}", "Parameters": [s("a")]},
        {"Statement": "DELETE FROM \"arn:aws:dynamodb:us-east-1:123456789012:table/orders\" WHERE pk = 'b' AND sk = '1'"}]})
    assert [(t.action, t.table, t.keys, t.whole_item) for t in got] == [
        ("PartiQLInsert", "orders", ("a",), True), ("PartiQLDelete", "orders", ("b",), True)]


@pytest.mark.parametrize("payload", [
    {"Statement": "SELECT * FROM orders WHERE pk = ?", "Parameters": []},                     # a ? without a value
    {"Statement": "SELECT * FROM orders WHERE pk = ?", "Parameters": [s("a"), s("b")]},       # a value without a ?
    {"Statement": "INSERT INTO orders VALUE {'sk': '1'}"},                                    # no partition key
    {"Statement": "SELECT * FROM orders.nope WHERE pk = 'a'"},
])
def test_partiql_idgate_cannot_bound(payload: dict[str, Any]) -> None:
    assert refused("ExecuteStatement", payload).reason is Reason.INVALID_DYNAMODB_REQUEST


def test_partiql_foreign_table_arn() -> None:
    payload = {"Statement": 'SELECT * FROM "arn:aws:dynamodb:us-east-1:999999999999:table/orders" WHERE pk = ?',
               "Parameters": [s("a")]}
    assert refused("ExecuteStatement", payload).reason is Reason.FOREIGN_TABLE


@pytest.mark.parametrize("op, payload", [
    ("TransactWriteItems", {"TransactItems": [{"Delete": {"TableName": "orders", "Key": {"pk": s("a")}}}] * 101}),
    ("TransactGetItems", {"TransactItems": [{"Get": {"TableName": "orders", "Key": {"pk": s("a")}}}] * 101}),
    ("BatchWriteItem", {"RequestItems": {"orders": [{"DeleteRequest": {"Key": {"pk": s("a")}}}] * 26}}),
    ("BatchWriteItem", {"RequestItems": {"orders": [{"DeleteRequest": {"Key": {"pk": s("a")}}}] * 13,
                                         "invoices": [{"DeleteRequest": {"Key": {"id": s("a")}}}] * 13}}),
    ("BatchGetItem", {"RequestItems": {"orders": {"Keys": [{"pk": s("a"), "sk": s("1")}] * 101}}}),
    ("BatchExecuteStatement", {"Statements": [{"Statement": "SELECT * FROM orders WHERE pk = 'a'"}] * 26}),
    ("ExecuteTransaction", {"TransactStatements": [{"Statement": "SELECT * FROM orders WHERE pk = 'a'"}] * 101}),
])
def test_more_elements_than_dynamodb_takes_are_refused_unread(op: str, payload: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as caught:
        decode(op, json.dumps(payload).encode(), NAMER)
    assert caught.value.reason is Reason.INVALID_DYNAMODB_REQUEST and "at most" in caught.value.message
