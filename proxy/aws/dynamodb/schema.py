"""Each table's key schema (its partition and sort key, and its indexes' keys), read with DescribeTable
through the caller's role, cached for a while, one DescribeTable per table however many callers ask at
once, and dropped when DynamoDB says a key does not match the schema (the table was recreated)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from cachetools import TTLCache

from proxy.aws.dynamodb.touches import KeySchema
from proxy.aws.flights import Flights
from proxy.core.errors import AccessDenied, DependencyError
from proxy.core.reasons import Reason

# (table) → (HTTP status, the DescribeTable answer's body)
Describe = Callable[[str], Awaitable[tuple[int, bytes]]]
SchemaKey = tuple[str, str]          # (account, table)
MIN_REFRESH = 10.0                   # seconds a fetched schema is kept at least, whatever a caller provokes


def parse_description(body: bytes) -> KeySchema:
    """DescribeTable's answer → the key names; DependencyError when it does not hold them."""
    try:
        table = json.loads(body)["Table"]
        keys = _keys(table["KeySchema"])
        indexes = {str(index["IndexName"]): _keys(index["KeySchema"])
                   for kind in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes") for index in table.get(kind, ())}
    except (ValueError, KeyError, TypeError) as exc:
        raise DependencyError("DynamoDB's DescribeTable answer has no key schema",
                              reason=Reason.KEY_SCHEMA_UNAVAILABLE) from exc
    return KeySchema(keys[0], keys[1], indexes)


def _keys(schema: Any) -> tuple[str, str | None]:
    by_type = {str(k["KeyType"]): str(k["AttributeName"]) for k in schema}
    if "HASH" not in by_type or set(by_type) - {"HASH", "RANGE"}:
        raise ValueError("no HASH key")
    return by_type["HASH"], by_type.get("RANGE")


class KeySchemas:
    def __init__(self, *, ttl: float, maxsize: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self._cache: TTLCache[SchemaKey, tuple[KeySchema, float]] = TTLCache(maxsize=maxsize, ttl=ttl, timer=clock)
        self._clock = clock
        self._flights: Flights[SchemaKey, KeySchema] = Flights("dynamodb-describe-table")
        self.describes = 0                # DescribeTable calls made, for tests and metrics

    async def get(self, account: str, tables: tuple[str, ...], describe: Describe) -> Mapping[str, KeySchema]:
        """The key schema of every table in `tables`, those not cached fetched concurrently."""
        found: dict[str, KeySchema] = {}
        pending: dict[str, asyncio.Task[KeySchema]] = {}
        for table in tables:
            cached = self._cache.get((account, table))
            if cached is None:
                pending[table] = self._flight((account, table), describe)
            else:
                found[table] = cached[0]
        if pending:
            # Shielded: a caller that goes away does not cancel the fetch others wait for.
            found.update(zip(pending, await asyncio.gather(*(asyncio.shield(t) for t in pending.values()))))
        return found

    def drop(self, account: str, tables: tuple[str, ...]) -> None:
        """Forget these tables' schemas (DynamoDB said a key does not match), each at most once per
        MIN_REFRESH: any caller can provoke that answer, and must not make idgate describe tables at will."""
        now = self._clock()
        for table in tables:
            cached = self._cache.get((account, table))
            if cached is not None and now - cached[1] >= MIN_REFRESH:
                del self._cache[(account, table)]

    def _flight(self, key: SchemaKey, describe: Describe) -> asyncio.Task[KeySchema]:
        return self._flights.start(key, lambda: self._fetch(key, describe))

    async def _fetch(self, key: SchemaKey, describe: Describe) -> KeySchema:
        self.describes += 1
        status, body = await describe(key[1])
        if status == 200:
            schema = parse_description(body)
            self._cache[key] = (schema, self._clock())
            return schema
        error = error_type(body)
        if status == 400 and error == "ResourceNotFoundException":
            # Only asked for tables the caller's rules name: saying it does not exist tells them nothing new.
            raise AccessDenied("the table does not exist", reason=Reason.KEY_SCHEMA_UNAVAILABLE)
        if status == 400 and error in ("AccessDeniedException", "UnrecognizedClientException"):
            raise AccessDenied("the role may not describe this table (the gateway needs dynamodb:DescribeTable)",
                               reason=Reason.KEY_SCHEMA_UNAVAILABLE)
        raise DependencyError("DynamoDB did not describe the table", reason=Reason.KEY_SCHEMA_UNAVAILABLE)


def error_type(body: bytes) -> str:
    """DynamoDB's error `__type`, without its namespace (`com.amazonaws.dynamodb.v20120810#X` → X)."""
    try:
        value = json.loads(body).get("__type", "")
    except (ValueError, AttributeError):
        return ""
    return str(value).rpartition("#")[2]
