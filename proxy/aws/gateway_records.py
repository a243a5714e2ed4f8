"""What the audit holds about a DynamoDB gateway call: for the decision, the caller's credentials, role,
rules and every touch (tables, indexes, partition keys or their HMACs, attribute names) with the request
body's SHA-256; for the outcome, DynamoDB's status, request id and error type, and the items returned or
written (their keys up to a bound, a digest of all), unprocessed counts and consumed capacity."""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from proxy.aws.dynamodb import partiql
from proxy.aws.dynamodb.calls import Call
from proxy.aws.dynamodb.touches import KeySchema, key_string
from proxy.core import caps
from proxy.core.errors import BadRequest
from proxy.core.model import Touch

MAX_TOUCHES = 100          # a transaction holds at most 100 elements: every touch of any valid call
MAX_KEYS = 32              # partition keys listed per touch (a BatchGetItem may name 100: their count is kept)
MAX_ITEM_KEYS = 20         # item keys listed in an outcome; all of them are in its digest
KEY = 256                  # one key value, as recorded
ATTRIBUTE = 128
ATTRIBUTES = 64
MAX_TOUCHES_BYTES = 16 * 1024   # the touches of one decision record, at most


class KeyRedactor:
    """Partition and sort key values as recorded: as they are, or as an HMAC under the ring's redaction key
    (the same value gives the same HMAC on every replica, so an auditor can still follow one key)."""

    def __init__(self, key: bytes | None) -> None:
        self._key = key

    def __call__(self, value: str) -> Any:
        if self._key is None:
            return caps.capped(value, KEY)
        return "hmac-sha256:" + hmac.new(self._key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def touch_view(touch: Touch, rule: str | None, redact: KeyRedactor) -> dict[str, Any]:
    view: dict[str, Any] = {"table": touch.table, "action": touch.action,
                            "keys": _list([redact(k) for k in touch.keys], MAX_KEYS),
                            "attributes": "*" if touch.attributes is None else _attributes(touch.attributes),
                            "rule": rule}
    if touch.index is not None:
        view["index"] = touch.index
    if touch.whole_item:
        view["whole_item"] = True
    return view


def _attributes(names: frozenset[str]) -> Any:
    """The attribute names, or past ATTRIBUTES their count and the first ones in order (found without
    sorting them all: an item may hold a hundred thousand names)."""
    if len(names) <= ATTRIBUTES:
        return [caps.capped(n, ATTRIBUTE) for n in sorted(names)]
    return {"capped": True, "count": len(names),
            "first": [caps.capped(n, ATTRIBUTE) for n in heapq.nsmallest(ATTRIBUTES, names)]}


def touches_view(touches: Sequence[Touch], rules: Sequence[str | None], redact: KeyRedactor) -> Any:
    """Every touch, or as many as fit in MAX_TOUCHES_BYTES with the count of all: a record's size must not
    grow with the call (a transaction of 100 wide items would otherwise be one of ~1 MB)."""
    views: list[dict[str, Any]] = []
    size = 0
    for touch, rule in zip(touches, rules, strict=True):
        view = touch_view(touch, rule, redact)
        size += len(json.dumps(view, separators=(",", ":")))
        if size > MAX_TOUCHES_BYTES:
            return {"capped": True, "count": len(touches), "first": views}
        views.append(view)
    return views


def _list(items: list[Any], count: int) -> Any:
    if len(items) <= count:
        return items
    return {"capped": True, "count": len(items), "first": items[:count]}


# --- the outcome ------------------------------------------------------------------------------------------

def outcome_view(call: Call, schemas: Mapping[str, KeySchema], status: int, body: bytes,
                 redact: KeyRedactor, *, error_type: str | None) -> dict[str, Any]:
    """DynamoDB's answer as the audit keeps it.  `body` is the answer's JSON (read whole by the gateway)."""
    view: dict[str, Any] = {"status": status}
    if error_type:
        view["error"] = caps.capped(error_type, ATTRIBUTE)
    if status != 200:
        return view
    try:
        answer = json.loads(body)
    except ValueError:
        view["unreadable"] = True
        return view
    if not isinstance(answer, dict):
        return view
    returned = [(table, item) for table, item in _returned_items(call, answer) if isinstance(item, dict)]
    writes = call.operation in _WRITES or any(s.kind in _PARTIQL_WRITES for s in call.statements)
    if returned or not writes:
        view["returned"] = _keys_view(returned, schemas, redact)
    if writes:
        view["written"] = _keys_view(list(_written_items(call)), schemas, redact)
    if call.operation == "BatchExecuteStatement":
        # Each statement succeeds or fails on its own: a failed one wrote or read nothing.
        view["errors"] = sum(1 for r in answer.get("Responses") or () if isinstance(r, dict) and "Error" in r)
    for field, name in (("Count", "count"), ("ScannedCount", "scanned_count")):
        if isinstance(answer.get(field), int):
            view[name] = answer[field]
    unprocessed = answer.get("UnprocessedKeys") or answer.get("UnprocessedItems")
    if isinstance(unprocessed, dict):
        view["unprocessed"] = sum(len(v.get("Keys", ())) if isinstance(v, dict) else len(v)
                                  for v in unprocessed.values() if isinstance(v, dict | list))
    if "LastEvaluatedKey" in answer or "NextToken" in answer:
        view["more"] = True
    if capacity := answer.get("ConsumedCapacity"):
        view["consumed_capacity"] = _capacity(capacity)
    return view


_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})
_PARTIQL_WRITES = frozenset({"insert", "update", "delete"})


def _returned_items(call: Call, answer: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    op, tables = call.operation, call.tables
    if op == "GetItem" and "Item" in answer:
        yield tables[0], answer["Item"]
    elif op in ("Query", "Scan", "ExecuteStatement"):
        for item in answer.get("Items") or ():
            yield tables[0], item
    elif op == "BatchGetItem":
        for table, items in (answer.get("Responses") or {}).items():
            for item in items if isinstance(items, list) else ():
                yield _short(table), item
    elif op in ("TransactGetItems", "ExecuteTransaction", "BatchExecuteStatement"):
        elements = call.statements or [next(iter(e.values())) for e in call.payload["TransactItems"]]
        for element, response in zip(elements, answer.get("Responses") or (), strict=False):
            if isinstance(response, dict) and "Item" in response:
                yield _element_table(element), response["Item"]


def _written_items(call: Call) -> Iterable[tuple[str, Any]]:
    p = call.payload
    if call.operation == "PutItem":
        yield call.tables[0], p.get("Item")
    elif call.operation in ("UpdateItem", "DeleteItem"):
        yield call.tables[0], p.get("Key")
    elif call.operation == "BatchWriteItem":
        for table, requests in p["RequestItems"].items():
            for request in requests:
                (shape, body), = request.items()
                yield _short(table), body.get("Item" if shape == "PutRequest" else "Key")
    elif call.operation == "TransactWriteItems":
        for element in p["TransactItems"]:
            (shape, body), = element.items()
            if shape != "ConditionCheck":
                yield _short(body["TableName"]), body.get("Item" if shape == "Put" else "Key")
    elif call.statements:
        elements = [p] if call.operation == "ExecuteStatement" else \
            p["Statements" if call.operation == "BatchExecuteStatement" else "TransactStatements"]
        for statement, element in zip(call.statements, elements, strict=False):
            if statement.kind in _PARTIQL_WRITES:
                yield _short(statement.table), _statement_key(statement, element.get("Parameters") or [])


def _statement_key(statement: partiql.Statement, parameters: Sequence[Any]) -> dict[str, Any]:
    """The item a PartiQL write names: INSERT's tuple, or what its WHERE pins to one value."""
    pinned = statement.item if statement.item is not None else \
        {name: values[0] for name, values in statement.key_values.items() if len(values) == 1}
    return {name: parameters[v.param] if v.param is not None and v.param < len(parameters) else v.literal
            for name, v in pinned.items()}


def _short(table: str) -> str:
    """A table named by ARN in the request (already checked to be the caller's own) → its name."""
    return table.rpartition("table/")[2] if table.startswith("arn:") else table


def _element_table(element: Any) -> str:
    return _short(element.table if hasattr(element, "table") else element.get("TableName", ""))


def _keys_view(items: Sequence[tuple[str, Any]], schemas: Mapping[str, KeySchema], redact: KeyRedactor) -> dict[str, Any]:
    keys = []
    for table, item in items:
        schema = schemas.get(table)
        if schema is None or not isinstance(item, dict):
            continue
        key: list[Any] = [table]
        for name in (schema.partition_key, schema.sort_key):
            if name is not None and name in item:
                try:
                    key.append(redact(key_string(item[name])))
                except BadRequest:   # an odd value in an answer is recorded as missing, never fatal
                    key.append(None)
        keys.append(key)
    whole = json.dumps(keys, separators=(",", ":"), ensure_ascii=True, default=str).encode()
    return {"count": len(items), "keys": keys[:MAX_ITEM_KEYS], "keys_sha256": hashlib.sha256(whole).hexdigest()}


def _capacity(capacity: Any) -> Any:
    entries = capacity if isinstance(capacity, list) else [capacity]
    return [{"table": caps.capped(str(e.get("TableName", "")), 300), "units": e.get("CapacityUnits")}
            for e in entries[:MAX_TOUCHES] if isinstance(e, dict)]
