"""A DynamoDB JSON-protocol request read strictly: the operation from X-Amz-Target, the body as one JSON
object with no duplicate key at any depth, only the parameters DynamoDB defines for that operation (the
legacy ones refused), and every table it names (ARNs reduced to the table's name).  Pure.

What is not understood is refused, never skipped: a parameter idgate does not read could touch data.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.aws.dynamodb import partiql
from proxy.core import strict_json
from proxy.core.errors import AccessDenied, BadRequest
from proxy.core.reasons import Reason

TARGET_PREFIX = "DynamoDB_20120810."
CONTENT_TYPE = "application/x-amz-json-1.0"

# Per operation, the parameters idgate understands (botocore's dynamodb model, less the legacy ones below).
PARAMETERS: Mapping[str, frozenset[str]] = {op: frozenset(names.split()) for op, names in {
    "GetItem": "TableName Key ProjectionExpression ExpressionAttributeNames ConsistentRead ReturnConsumedCapacity",
    "PutItem": "TableName Item ConditionExpression ExpressionAttributeNames ExpressionAttributeValues ReturnValues "
               "ReturnValuesOnConditionCheckFailure ReturnConsumedCapacity ReturnItemCollectionMetrics",
    "UpdateItem": "TableName Key UpdateExpression ConditionExpression ExpressionAttributeNames "
                  "ExpressionAttributeValues ReturnValues ReturnValuesOnConditionCheckFailure "
                  "ReturnConsumedCapacity ReturnItemCollectionMetrics",
    "DeleteItem": "TableName Key ConditionExpression ExpressionAttributeNames ExpressionAttributeValues ReturnValues "
                  "ReturnValuesOnConditionCheckFailure ReturnConsumedCapacity ReturnItemCollectionMetrics",
    "Query": "TableName IndexName KeyConditionExpression FilterExpression ProjectionExpression "
             "ExpressionAttributeNames ExpressionAttributeValues Select Limit ConsistentRead ScanIndexForward "
             "ExclusiveStartKey ReturnConsumedCapacity",
    "Scan": "TableName IndexName FilterExpression ProjectionExpression ExpressionAttributeNames "
            "ExpressionAttributeValues Select Limit ConsistentRead Segment TotalSegments ExclusiveStartKey "
            "ReturnConsumedCapacity",
    "BatchGetItem": "RequestItems ReturnConsumedCapacity",
    "BatchWriteItem": "RequestItems ReturnConsumedCapacity ReturnItemCollectionMetrics",
    "TransactGetItems": "TransactItems ReturnConsumedCapacity",
    "TransactWriteItems": "TransactItems ClientRequestToken ReturnConsumedCapacity ReturnItemCollectionMetrics",
    "ExecuteStatement": "Statement Parameters ConsistentRead NextToken Limit ReturnConsumedCapacity "
                        "ReturnValuesOnConditionCheckFailure",
    "BatchExecuteStatement": "Statements ReturnConsumedCapacity",
    "ExecuteTransaction": "TransactStatements ClientRequestToken ReturnConsumedCapacity",
    "DescribeTable": "TableName",
}.items()}
# Superseded by expressions; refused rather than interpreted (DynamoDB still accepts them).
LEGACY_PARAMETERS = frozenset({"AttributesToGet", "ConditionalOperator", "Expected", "AttributeUpdates",
                               "KeyConditions", "QueryFilter", "ScanFilter"})
# Element shapes inside batches and transactions.
ELEMENT_PARAMETERS: Mapping[str, frozenset[str]] = {shape: frozenset(names.split()) for shape, names in {
    "KeysAndAttributes": "Keys ProjectionExpression ExpressionAttributeNames ConsistentRead",
    "Get": "TableName Key ProjectionExpression ExpressionAttributeNames",
    "ConditionCheck": "TableName Key ConditionExpression ExpressionAttributeNames ExpressionAttributeValues "
                      "ReturnValuesOnConditionCheckFailure",
    "Put": "TableName Item ConditionExpression ExpressionAttributeNames ExpressionAttributeValues "
           "ReturnValuesOnConditionCheckFailure",
    "Delete": "TableName Key ConditionExpression ExpressionAttributeNames ExpressionAttributeValues "
              "ReturnValuesOnConditionCheckFailure",
    "Update": "TableName Key UpdateExpression ConditionExpression ExpressionAttributeNames "
              "ExpressionAttributeValues ReturnValuesOnConditionCheckFailure",
    "PutRequest": "Item",
    "DeleteRequest": "Key",
    "Statement": "Statement Parameters ConsistentRead ReturnValuesOnConditionCheckFailure",
}.items()}

# DynamoDB's limits on the elements of one call (items for batches, actions for transactions).
MAX_ELEMENTS: Mapping[str, int] = {"BatchGetItem": 100, "BatchWriteItem": 25, "TransactGetItems": 100,
                                   "TransactWriteItems": 100, "BatchExecuteStatement": 25, "ExecuteTransaction": 100}

# The largest body each operation can need (DynamoDB's item is at most 400 KB, a transaction 4 MB, a batch
# write or statement batch 16 MB), read no further: a bigger one would only cost idgate's CPU to refuse.
MAX_ITEM_CALL_BYTES = 1024 * 1024
MAX_BODY_BYTES: Mapping[str, int] = {"BatchWriteItem": 16 * 1024 * 1024, "BatchExecuteStatement": 16 * 1024 * 1024,
                                     "TransactWriteItems": 5 * 1024 * 1024, "ExecuteTransaction": 5 * 1024 * 1024,
                                     "DescribeTable": 64 * 1024}

_TABLE = re.compile(r"[A-Za-z0-9_.-]{3,255}")
_TABLE_ARN = re.compile(r"arn:(?P<partition>aws[a-z-]*):dynamodb:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
                        r"table/(?P<table>[A-Za-z0-9_.-]{3,255})")


def invalid(message: str) -> BadRequest:
    return BadRequest(message, reason=Reason.INVALID_DYNAMODB_REQUEST)


@functools.cache
def known_operations() -> frozenset[str]:
    """Every operation of DynamoDB's API (botocore's model): the ones idgate does not serve are denied
    by name rather than called unknown.  Read once, off the loop (the gateway calls this at startup)."""
    import botocore.session   # noqa: PLC0415 - the model is only needed here

    return frozenset(botocore.session.get_session().get_service_model("dynamodb").operation_names)


@dataclass(frozen=True, slots=True)
class TableNamer:
    """Table names as given (a name or an ARN) → the name, for ARNs of the caller's own partition, account
    and region only (any other ARN is another table than the one the policy names)."""

    partition: str
    region: str
    account: str

    def name(self, given: object) -> str:
        if not isinstance(given, str):
            raise invalid("a table name must be a string")
        if given.startswith("arn:"):
            match = _TABLE_ARN.fullmatch(given)
            if match is None:
                raise invalid("a table ARN must look like arn:aws:dynamodb:REGION:ACCOUNT:table/NAME")
            if (match["partition"], match["region"], match["account"]) != (self.partition, self.region, self.account):
                raise AccessDenied("the table ARN names another account, region or partition", reason=Reason.FOREIGN_TABLE)
            return match["table"]
        if not _TABLE.fullmatch(given):
            raise invalid("a table name must be 3-255 characters of [A-Za-z0-9_.-]")
        return given


@dataclass(frozen=True, slots=True)
class Call:
    """A request that passed the strict reading, with its PartiQL statements parsed."""

    operation: str
    payload: Mapping[str, Any]
    tables: tuple[str, ...]                       # every table named, in order, each once
    statements: tuple[partiql.Statement, ...] = ()


def operation(target: str | None) -> str:
    """The operation X-Amz-Target names; unknown ones are refused, control-plane ones denied."""
    name = target[len(TARGET_PREFIX):] if target and target.startswith(TARGET_PREFIX) else None
    if name is not None and name in PARAMETERS:
        return name
    if name is not None and name in known_operations():
        raise AccessDenied(f"{name} is not available through the gateway", reason=Reason.ACTION_NOT_GRANTED)
    raise BadRequest("unknown X-Amz-Target", reason=Reason.UNKNOWN_OPERATION)


def decode(op: str, body: bytes, namer: TableNamer) -> Call:
    payload = _json_object(body)
    _only(payload, PARAMETERS[op], op)
    tables: list[str] = []
    statements: list[partiql.Statement] = []
    if op in ("BatchGetItem", "BatchWriteItem"):
        items = _mapping(payload.get("RequestItems"), "RequestItems")
        if not items:
            raise invalid("RequestItems is empty")
        _at_most(len(items), op)       # each table holds at least one element
        elements = 0
        for given, entry in items.items():
            tables.append(namer.name(given))
            if op == "BatchGetItem":
                _only(_mapping(entry, "a table's KeysAndAttributes"), ELEMENT_PARAMETERS["KeysAndAttributes"],
                      "KeysAndAttributes")
                keys = entry.get("Keys")
                elements += len(keys) if isinstance(keys, list) else 0
            elif not isinstance(entry, list) or not entry:
                raise invalid("each table's write requests must be a non-empty list")
            else:
                elements += len(entry)
                _at_most(elements, op)
                for request in entry:
                    _one_of(_mapping(request, "a write request"), ("PutRequest", "DeleteRequest"))
        _at_most(elements, op)
    elif op in ("TransactGetItems", "TransactWriteItems"):
        for element in _elements(payload, "TransactItems", op):
            _, body_of = _one_of(element, ("Get",) if op == "TransactGetItems" else
                                 ("ConditionCheck", "Put", "Delete", "Update"))
            tables.append(namer.name(body_of.get("TableName")))
    elif op in ("ExecuteStatement", "BatchExecuteStatement", "ExecuteTransaction"):
        statement_elements = [payload] if op == "ExecuteStatement" else _elements(
            payload, "Statements" if op == "BatchExecuteStatement" else "TransactStatements", op)
        for element in statement_elements:
            if element is not payload:
                _only(element, ELEMENT_PARAMETERS["Statement"], "a statement")
            text = element.get("Statement")
            if not isinstance(text, str):
                raise invalid("Statement must be a string")
            statement = partiql.parse(text)
            statements.append(statement)
            tables.append(namer.name(statement.table))
    else:
        tables.append(namer.name(payload.get("TableName")))
    return Call(op, payload, tuple(dict.fromkeys(tables)), tuple(statements))


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        # Strict: DynamoDB's own JSON reader might resolve a duplicate key the other way.
        value = strict_json.loads(body)
    except ValueError as exc:
        raise BadRequest("the body is not a JSON object idgate can read", reason=Reason.MALFORMED_JSON) from exc
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object", reason=Reason.MALFORMED_JSON)
    return value


def _only(payload: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    for key in payload:
        if key in LEGACY_PARAMETERS:
            raise invalid(f"{key} is a legacy parameter the gateway does not accept: use expressions")
        if key not in allowed:
            raise invalid(f"{what} has a parameter the gateway does not know")


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise invalid(f"{what} must be a JSON object")
    return value


def _elements(payload: Mapping[str, Any], key: str, op: str) -> list[dict[str, Any]]:
    value = payload.get(key)
    if not isinstance(value, list) or not value:
        raise invalid(f"{key} must be a non-empty list of objects")
    _at_most(len(value), op)
    if not all(isinstance(e, dict) for e in value):
        raise invalid(f"{key} must be a non-empty list of objects")
    return value


def _at_most(count: int, op: str) -> None:
    """DynamoDB's own element limits, checked before any element is read: beyond them DynamoDB refuses the
    call anyway, and reading thousands of elements would only cost idgate's CPU."""
    if count > MAX_ELEMENTS[op]:
        raise invalid(f"{op} takes at most {MAX_ELEMENTS[op]} elements")


def _one_of(element: Mapping[str, Any], shapes: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """The one action of a transaction or batch element, checked against its shape's parameters."""
    if len(element) != 1 or next(iter(element)) not in shapes:
        raise invalid(f"each element must hold exactly one of {', '.join(shapes)}")
    shape, body = next(iter(element.items()))
    _only(_mapping(body, shape), ELEMENT_PARAMETERS[shape], shape)
    return shape, body
