"""A decoded DynamoDB call → the touches IAM's fine-grained access control would judge: per table (and
per transaction element), the action, the partition-key values, and the top-level attributes read or
written, resolved through ExpressionAttributeNames.  Pure; the key schemas come from DescribeTable.

Partition keys come only from where DynamoDB takes them: a Key, an Item, a Query's key condition, a
PartiQL WHERE that pins them.  A key named in a filter or condition expression pins nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from proxy.aws.dynamodb import expressions, partiql
from proxy.aws.dynamodb.calls import Call, TableNamer, invalid
from proxy.core.model import Touch

_NO_INDEXES: Mapping[str, tuple[str, str | None]] = MappingProxyType({})
_PARTIQL_ACTIONS = {"select": "PartiQLSelect", "exists": "PartiQLSelect", "insert": "PartiQLInsert",
                    "update": "PartiQLUpdate", "delete": "PartiQLDelete"}
# ReturnValues that hand back the whole item: all attributes, as far as an attribute list is concerned.
_ALL_RETURNED = frozenset({"ALL_OLD", "ALL_NEW"})
_RETURN_VALUES = frozenset({"NONE", "ALL_OLD", "UPDATED_OLD", "ALL_NEW", "UPDATED_NEW"})
_ON_CONDITION_FAILURE = frozenset({"NONE", "ALL_OLD"})
_SELECT = frozenset({"ALL_ATTRIBUTES", "ALL_PROJECTED_ATTRIBUTES", "SPECIFIC_ATTRIBUTES", "COUNT"})


@dataclass(frozen=True, slots=True)
class KeySchema:
    """A table's primary key and its indexes' keys (attribute names), as DescribeTable gives them."""

    partition_key: str
    sort_key: str | None = None
    indexes: Mapping[str, tuple[str, str | None]] = field(default_factory=lambda: _NO_INDEXES)

    def key_names(self) -> frozenset[str]:
        return frozenset(k for k in (self.partition_key, self.sort_key) if k is not None)


def key_string(value: object) -> str:
    """A partition-key value as dynamodb:LeadingKeys compares it: the S, N or B value's text."""
    if isinstance(value, dict) and len(value) == 1:
        (kind, text), = value.items()
        if kind in ("S", "N", "B") and isinstance(text, str):
            return text
    raise invalid("a key value must be one S, N or B attribute value")


def touches(call: Call, schemas: Mapping[str, KeySchema], namer: TableNamer) -> tuple[Touch, ...]:
    p = call.payload
    op = call.operation
    if op == "DescribeTable":
        return (Touch(call.tables[0], None, op, (), frozenset()),)
    if op in ("GetItem", "PutItem", "UpdateItem", "DeleteItem"):
        return (_item_touch(op, call.tables[0], p, schemas[call.tables[0]]),)
    if op in ("Query", "Scan"):
        return (_read_touch(op, call.tables[0], p, schemas[call.tables[0]]),)
    if op == "BatchGetItem":
        return tuple(_batch_get(namer.name(given), entry, schemas) for given, entry in p["RequestItems"].items())
    if op == "BatchWriteItem":
        return tuple(_batch_write(namer.name(given), entry, schemas) for given, entry in p["RequestItems"].items())
    if op in ("TransactGetItems", "TransactWriteItems"):
        result = []
        for element in p["TransactItems"]:
            (shape, body), = element.items()
            table = namer.name(body["TableName"])
            action = {"Get": "GetItem", "Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                      "ConditionCheck": "ConditionCheckItem"}[shape]
            result.append(_item_touch(action, table, body, schemas[table]))
        return tuple(result)
    given = [p] if op == "ExecuteStatement" else p["Statements" if op == "BatchExecuteStatement" else "TransactStatements"]
    return tuple(_statement_touch(statement, element, schemas, namer)
                 for statement, element in zip(call.statements, given, strict=True))


def _names(body: Mapping[str, Any]) -> Mapping[str, str]:
    names = body.get("ExpressionAttributeNames", {})
    if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
        raise invalid("ExpressionAttributeNames must map placeholders to strings")
    return names


def _values(body: Mapping[str, Any]) -> Mapping[str, Any]:
    values = body.get("ExpressionAttributeValues", {})
    if not isinstance(values, dict):
        raise invalid("ExpressionAttributeValues must be an object")
    return values


def _text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise invalid(f"{key} must be a string")
    return value


def _attribute_map(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict) or not value:
        raise invalid(f"{what} must be a non-empty map of attributes")
    return value


def _key(body: Mapping[str, Any], schema: KeySchema, what: str = "Key") -> Mapping[str, Any]:
    key = _attribute_map(body.get(what), what)
    if schema.partition_key not in key:
        raise invalid(f"{what} lacks the table's partition key")
    return key


def _used(body: Mapping[str, Any], names: Mapping[str, str], *parts: tuple[str, str]) -> set[str]:
    """The top-level attributes the named expressions of `body` use: (parameter, kind) pairs."""
    parse = {"condition": expressions.condition, "projection": expressions.projection,
             "update": expressions.update}
    attributes: set[str] = set()
    for key, kind in parts:
        text = _text(body, key)
        if text is not None:
            attributes |= parse[kind](text, names).attributes
    return attributes


def _choice(body: Mapping[str, Any], key: str, allowed: frozenset[str]) -> str | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, str) or value not in allowed):
        raise invalid(f"{key} must be one of {', '.join(sorted(allowed))}")
    return value


def _returns_all(body: Mapping[str, Any]) -> bool:
    return (_choice(body, "ReturnValues", _RETURN_VALUES) in _ALL_RETURNED
            or _choice(body, "ReturnValuesOnConditionCheckFailure", _ON_CONDITION_FAILURE) == "ALL_OLD")


def _item_touch(action: str, table: str, body: Mapping[str, Any], schema: KeySchema) -> Touch:
    names = _names(body)
    if action == "PutItem":
        item = _key(body, schema, "Item")
        attributes = set(item) | _used(body, names, ("ConditionExpression", "condition"))
    else:
        item = _key(body, schema)
        attributes = set(item) | _used(body, names, ("ConditionExpression", "condition"),
                                       ("UpdateExpression", "update"), ("ProjectionExpression", "projection"))
    everything = _returns_all(body) or (action == "GetItem" and body.get("ProjectionExpression") is None)
    return Touch(table, None, action, (key_string(item[schema.partition_key]),),
                 None if everything else frozenset(attributes), whole_item=action in ("PutItem", "DeleteItem"))


def _read_touch(op: str, table: str, body: Mapping[str, Any], schema: KeySchema) -> Touch:
    names = _names(body)
    index = body.get("IndexName")
    if index is not None and (not isinstance(index, str) or index not in schema.indexes):
        raise invalid("IndexName is not an index of the table")
    partition_key = schema.indexes[index][0] if index is not None else schema.partition_key
    attributes = _used(body, names, ("FilterExpression", "condition"), ("ProjectionExpression", "projection"))
    keys: tuple[str, ...] = ()
    if op == "Query":
        text = _text(body, "KeyConditionExpression")
        if text is None:
            raise invalid("a Query needs a KeyConditionExpression")
        condition = expressions.key_condition(text, names, partition_key)
        attributes |= condition.used.attributes
        value = _values(body).get(condition.partition_value)
        if value is None:
            raise invalid("the key condition's value is not in ExpressionAttributeValues")
        keys = (key_string(value),)
    select = _choice(body, "Select", _SELECT)
    projected = body.get("ProjectionExpression") is not None
    everything = select in ("ALL_ATTRIBUTES", "ALL_PROJECTED_ATTRIBUTES") or (select is None and not projected)
    return Touch(table, index, op, keys, None if everything else frozenset(attributes),
                 mapped=index is None or partition_key == schema.partition_key)


def _batch_get(table: str, body: Mapping[str, Any], schemas: Mapping[str, KeySchema]) -> Touch:
    schema = schemas[table]
    keys = body.get("Keys")
    if not isinstance(keys, list) or not keys:
        raise invalid("Keys must be a non-empty list")
    key_maps = [_key({"Key": k}, schema) for k in keys]
    projected = body.get("ProjectionExpression") is not None
    attributes = set().union(*key_maps) | _used(body, _names(body), ("ProjectionExpression", "projection"))
    return Touch(table, None, "BatchGetItem", _partition_keys(key_maps, schema),
                 frozenset(attributes) if projected else None)


def _batch_write(table: str, requests: Sequence[Mapping[str, Any]], schemas: Mapping[str, KeySchema]) -> Touch:
    schema = schemas[table]
    items = []
    for request in requests:   # each holds one PutRequest or DeleteRequest (checked by calls.decode)
        (shape, body), = request.items()
        items.append(_key(body, schema, "Item" if shape == "PutRequest" else "Key"))
    return Touch(table, None, "BatchWriteItem", _partition_keys(items, schema),
                 frozenset(set().union(*items)), whole_item=True)


def _partition_keys(items: Iterable[Mapping[str, Any]], schema: KeySchema) -> tuple[str, ...]:
    return tuple(dict.fromkeys(key_string(item[schema.partition_key]) for item in items))


def _statement_touch(statement: partiql.Statement, element: Mapping[str, Any], schemas: Mapping[str, KeySchema],
                     namer: TableNamer) -> Touch:
    table = namer.name(statement.table)
    schema = schemas[table]
    parameters = element.get("Parameters", [])
    if not isinstance(parameters, list) or len(parameters) != statement.parameters:
        raise invalid("Parameters must list one value for each ? of the statement")
    index = statement.index
    if index is not None and index not in schema.indexes:
        raise invalid("the statement reads an index the table does not have")
    partition_key = schema.indexes[index][0] if index is not None else schema.partition_key
    if statement.kind == "insert":
        item = statement.item or {}
        pinned: Sequence[partiql.Value] = (item[partition_key],) if partition_key in item else ()
        if not pinned:
            raise invalid("INSERT lacks the table's partition key")
    else:
        pinned = statement.key_values.get(partition_key, ())
    keys = tuple(dict.fromkeys(_value_string(v, parameters) for v in pinned))
    attributes = statement.attributes
    if attributes is not None and _choice(element, "ReturnValuesOnConditionCheckFailure", _ON_CONDITION_FAILURE) == "ALL_OLD":
        attributes = None
    return Touch(table, index, _PARTIQL_ACTIONS[statement.kind], keys, attributes,
                 whole_item=statement.kind in ("insert", "delete"),
                 mapped=index is None or partition_key == schema.partition_key)


def _value_string(value: partiql.Value, parameters: Sequence[Any]) -> str:
    if value.param is not None:
        return key_string(parameters[value.param])
    return key_string(value.literal)
