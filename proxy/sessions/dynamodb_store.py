"""The shared store of replicas (`login.store.type: dynamodb`): one DynamoDB table that every idgate of a
Deployment uses, so a session lives on whichever replica a request reaches and a logout ends it on all.

The table (`table_definition` is its CreateTable request; DynamoDB TTL on the `ttl` attribute):

    aws dynamodb create-table --table-name idgate-sessions --billing-mode PAY_PER_REQUEST \\
      --attribute-definitions AttributeName=pk,AttributeType=S AttributeName=by_sid,AttributeType=S \\
                              AttributeName=by_sub,AttributeType=S \\
      --key-schema AttributeName=pk,KeyType=HASH \\
      --global-secondary-indexes \\
        'IndexName=by_sid,KeySchema=[{AttributeName=by_sid,KeyType=HASH}],Projection={ProjectionType=KEYS_ONLY}' \\
        'IndexName=by_sub,KeySchema=[{AttributeName=by_sub,KeyType=HASH}],Projection={ProjectionType=KEYS_ONLY}'
    aws dynamodb update-time-to-live --table-name idgate-sessions \\
      --time-to-live-specification Enabled=true,AttributeName=ttl

Items: `pk` = `s#<session key>` (a session: `body` its JSON, `v` its version, `exp` its exact expiry, `by_sub`
and, with a sid, `by_sid`) or `c#<claim key>` (a claim: `exp`).  `ttl` is the expiry in whole epoch seconds;
DynamoDB deletes expired items only eventually (within days), so reads check `exp` themselves.
delete_matching uses two sparse GSIs, not one with a composite key: a session is found both by its
(issuer, sid) and by its (issuer, subject), and one item has only one key per index.  Their keys are the
SHA-256 of the JSON pair, so an issuer's sid never matches another issuer's.  GSIs are eventually
consistent: a back-channel logout arriving within a moment of its login may not find that session yet.

IAM: dynamodb:GetItem, PutItem, DeleteItem on the table and dynamodb:Query on its indexes.  boto3 blocks,
so every call runs on the store's own threads; botocore errors become DependencyError (503) here.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from proxy.core.errors import DependencyError
from proxy.core.reasons import Reason
from proxy.sessions.codec import session_from_text, session_text
from proxy.sessions.store import StoredSession

DYNAMODB_THREADS = 16            # concurrent calls per process; also botocore's connection pool
DYNAMODB_TIMEOUT = 2.0           # connect and read timeout of one call: a request waits at most a few of these
BY_SID, BY_SUB = "by_sid", "by_sub"
_CONDITION_FAILED = "ConditionalCheckFailedException"
# `ttl` is a DynamoDB reserved word; the others are named the same way for one style.
_NAMES = {"#exp": "exp", "#v": "v"}

T = TypeVar("T")


def table_definition(table: str) -> dict[str, Any]:
    """The CreateTable request of the sessions table (then UpdateTimeToLive on `ttl`)."""
    return {
        "TableName": table, "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": name, "AttributeType": "S"} for name in ("pk", BY_SID, BY_SUB)],
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
        "GlobalSecondaryIndexes": [
            {"IndexName": name, "KeySchema": [{"AttributeName": name, "KeyType": "HASH"}],
             "Projection": {"ProjectionType": "KEYS_ONLY"}} for name in (BY_SID, BY_SUB)],
    }


def lookup_key(issuer: str, value: str) -> str:
    return hashlib.sha256(json.dumps([issuer, value]).encode()).hexdigest()


class DynamoDbStore:
    """A SessionStore on one DynamoDB table; build it with `DynamoDbStore.open` (blocking: off the loop)."""

    def __init__(self, client: Any, table: str, executor: ThreadPoolExecutor, clock: Callable[[], float]) -> None:
        self._client = client
        self._table = table
        self._executor = executor
        self._clock = clock
        self._closed = False

    @classmethod
    def open(cls, table: str, region: str, endpoint: str | None, *, session: boto3.session.Session | None = None,
             clock: Callable[[], float] = time.time) -> DynamoDbStore:
        """idgate's own credentials (boto3's usual chain); endpoint None: AWS, or $AWS_ENDPOINT_URL_DYNAMODB."""
        try:
            client = (session or boto3.session.Session()).client(
                "dynamodb", region_name=region, endpoint_url=endpoint,
                config=BotoConfig(connect_timeout=DYNAMODB_TIMEOUT, read_timeout=DYNAMODB_TIMEOUT,
                                  retries={"mode": "standard", "total_max_attempts": 2},
                                  max_pool_connections=DYNAMODB_THREADS, user_agent_extra="idgate-sessions"))
        except BotoCoreError as exc:
            raise DependencyError(f"cannot build the DynamoDB client of the session store: {type(exc).__name__}",
                                  reason=Reason.SESSION_STORE_UNAVAILABLE) from exc
        executor = ThreadPoolExecutor(DYNAMODB_THREADS, thread_name_prefix="idgate-session-store")
        return cls(client, table, executor, clock)

    async def create(self, session: StoredSession) -> None:
        if await self._run(self._put, _session_item(session), "attribute_not_exists(pk)", {}):
            return
        # botocore retries a call whose answer was lost: the retry then finds the item the first try wrote.
        stored = await self.get(session.key)
        if stored is None or session_text(stored) != session_text(session):
            raise ValueError("a new session's key is already stored")

    async def get(self, key: str) -> StoredSession | None:
        answer = await self._run(self._call, "get_item", Key=_pk("s#", key), ConsistentRead=True,
                                 ProjectionExpression="body")
        item = answer.get("Item")
        if item is None:
            return None
        session = session_from_text(str(item.get("body", {}).get("S", "")))
        return session if session.expires_at > self._clock() else None

    async def update(self, session: StoredSession) -> bool:
        return await self._run(self._put, _session_item(session), "#v = :expected AND #exp > :now", {
            ":expected": {"N": str(session.version - 1)}, ":now": _number(self._clock())})

    async def delete(self, key: str) -> None:
        await self._run(self._call, "delete_item", Key=_pk("s#", key))

    async def delete_matching(self, issuer: str, *, idp_session: str | None = None,
                              subject: str | None = None) -> int:
        index, value = (BY_SID, idp_session) if idp_session is not None else (BY_SUB, subject)
        if value is None:
            return 0
        return await self._run(self._delete_found, index, lookup_key(issuer, value))

    async def claim(self, key: str, expires_at: float) -> bool:
        item = {**_pk("c#", key), "ttl": {"N": str(math.ceil(expires_at))}, "exp": _number(expires_at)}
        return await self._run(self._put, item, "attribute_not_exists(pk) OR #exp <= :now",
                               {":now": _number(self._clock())})

    async def release(self, key: str) -> None:
        await self._run(self._call, "delete_item", Key=_pk("c#", key))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._client.close)
        finally:
            self._executor.shutdown(wait=False)

    # -- on the store's threads ---------------------------------------------------------------

    async def _run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise DependencyError("the session store is closed", reason=Reason.SESSION_STORE_UNAVAILABLE)
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, functools.partial(call, *args, **kwargs))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "unknown")
            raise DependencyError(f"the session store (DynamoDB table {self._table}) answered {code}",
                                  reason=Reason.SESSION_STORE_UNAVAILABLE) from exc
        except BotoCoreError as exc:
            raise DependencyError(f"the session store (DynamoDB) is unreachable: {type(exc).__name__}",
                                  reason=Reason.SESSION_STORE_UNAVAILABLE) from exc

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        answer: dict[str, Any] = getattr(self._client, operation)(TableName=self._table, **kwargs)
        return answer

    def _put(self, item: dict[str, Any], condition: str, values: dict[str, Any]) -> bool:
        """A conditional PutItem: False (not an error) when the condition does not hold."""
        try:
            self._call("put_item", Item=item, ConditionExpression=condition, **_expression(condition, values))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == _CONDITION_FAILED:
                return False
            raise
        return True

    def _delete_found(self, index: str, value: str) -> int:
        deleted = 0
        start: dict[str, Any] | None = None
        while True:
            page = self._call("query", IndexName=index, KeyConditionExpression=f"{index} = :k",
                              ExpressionAttributeValues={":k": {"S": value}}, ProjectionExpression="pk",
                              **({"ExclusiveStartKey": start} if start else {}))
            for found in page.get("Items", []):
                # Counted only when it was still there: the index may lag behind a delete.
                try:
                    self._call("delete_item", Key={"pk": found["pk"]}, ConditionExpression="attribute_exists(pk)")
                    deleted += 1
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") != _CONDITION_FAILED:
                        raise
            start = page.get("LastEvaluatedKey")
            if not start:
                return deleted


def _pk(prefix: str, key: str) -> dict[str, Any]:
    return {"pk": {"S": prefix + key}}


def _number(value: float) -> dict[str, str]:
    return {"N": repr(float(value))}


def _expression(condition: str, values: dict[str, Any]) -> dict[str, Any]:
    names = {name: attr for name, attr in _NAMES.items() if name in condition}
    return {**({"ExpressionAttributeNames": names} if names else {}),
            **({"ExpressionAttributeValues": values} if values else {})}


def _session_item(session: StoredSession) -> dict[str, Any]:
    item = {**_pk("s#", session.key), "ttl": {"N": str(math.ceil(session.expires_at))},
            "exp": _number(session.expires_at), "v": {"N": str(session.version)}, "body": {"S": session_text(session)},
            BY_SUB: {"S": lookup_key(session.issuer, session.subject)}}
    if session.idp_session is not None:
        item[BY_SID] = {"S": lookup_key(session.issuer, session.idp_session)}
    return item
