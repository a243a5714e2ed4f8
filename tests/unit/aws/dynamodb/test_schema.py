"""Key schemas from DescribeTable: one call per table however many callers ask at once, kept for the TTL,
dropped on request, and DynamoDB's refusals translated (proxy.aws.dynamodb.schema)."""

from __future__ import annotations

import asyncio
import json

import pytest

from proxy.aws.dynamodb.schema import MIN_REFRESH, KeySchemas, parse_description
from proxy.aws.dynamodb.touches import KeySchema
from proxy.core.errors import AccessDenied, DependencyError
from proxy.core.reasons import Reason

ORDERS = json.dumps({"Table": {
    "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    "GlobalSecondaryIndexes": [{"IndexName": "by-status", "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"}]}],
}}).encode()


class Describer:
    def __init__(self, status: int = 200, body: bytes = ORDERS) -> None:
        self.status, self.body, self.calls = status, body, 0
        self.release = asyncio.Event()

    async def __call__(self, table: str) -> tuple[int, bytes]:
        self.calls += 1
        await self.release.wait()
        return self.status, self.body


def test_description_gives_the_keys() -> None:
    assert parse_description(ORDERS) == KeySchema("pk", "sk", {"by-status": ("status", None)})


@pytest.mark.parametrize("body", [b"{}", b"[]", b"nope", json.dumps({"Table": {"KeySchema": []}}).encode(),
                                  json.dumps({"Table": {"KeySchema": [{"AttributeName": "a", "KeyType": "X"}]}}).encode()])
def test_a_description_without_keys_is_a_dependency_failure(body: bytes) -> None:
    with pytest.raises(DependencyError):
        parse_description(body)


async def test_concurrent_callers_share_one_describe_and_the_answer_is_kept() -> None:
    now = [0.0]
    schemas = KeySchemas(ttl=60, clock=lambda: now[0])
    describe = Describer()
    waiting = [asyncio.create_task(schemas.get("1", ("orders",), describe)) for _ in range(5)]
    await asyncio.sleep(0)
    describe.release.set()
    answers = await asyncio.gather(*waiting)
    assert describe.calls == 1 and all(a["orders"].partition_key == "pk" for a in answers)
    await schemas.get("1", ("orders",), describe)
    assert describe.calls == 1                       # cached
    now[0] = 61.0
    await schemas.get("1", ("orders",), describe)
    assert describe.calls == 2                       # past the TTL
    schemas.drop("1", ("orders",))
    await schemas.get("1", ("orders",), describe)
    assert describe.calls == 2                       # a drop within MIN_REFRESH of the fetch is ignored
    now[0] = 61.0 + MIN_REFRESH
    schemas.drop("1", ("orders",))
    await schemas.get("1", ("orders",), describe)
    assert describe.calls == 3                       # dropped (a key-schema mismatch)
    await schemas.get("2", ("orders",), describe)
    assert describe.calls == 4                       # another account's table of that name


@pytest.mark.parametrize("status, error, raised", [
    (400, "com.amazonaws.dynamodb.v20120810#ResourceNotFoundException", AccessDenied),
    (400, "com.amazon.coral.service#AccessDeniedException", AccessDenied),
    (500, "com.amazonaws.dynamodb.v20120810#InternalServerError", DependencyError),
    (400, "com.amazonaws.dynamodb.v20120810#ThrottlingException", DependencyError),
])
async def test_refusals_are_translated_and_not_cached(status: int, error: str, raised: type[Exception]) -> None:
    schemas = KeySchemas(ttl=60)
    describe = Describer(status, json.dumps({"__type": error}).encode())
    describe.release.set()
    for _ in range(2):
        with pytest.raises(raised) as caught:
            await schemas.get("1", ("orders",), describe)
        assert caught.value.reason is Reason.KEY_SCHEMA_UNAVAILABLE   # type: ignore[attr-defined]
    assert describe.calls == 2
