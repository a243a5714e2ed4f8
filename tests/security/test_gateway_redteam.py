"""Red-team findings against the DynamoDB gateway, one test each: every one failed before its fix, and
its docstring says what an attacker got then (severity first).  The stack is the one tests/harness/gateway.py
builds (moto as STS and DynamoDB, idgate in-process, GATEWAY_POLICY): the attacker holds gateway
credentials for tenant "acme" (leading_keys ["${claims.tenant}"]) or none at all.

idgate runs in the test's own event loop, so a synchronous stall inside idgate shows up directly as a gap
in a ticker task of the test (test_one_call_stalls_the_event_loop)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from proxy.aws.credentials import AwsCredentials
from proxy.core.errors import ConfigError
from tests.harness.gateway import GatewayFactory, GatewayStack, create_tables
from tests.harness.processes import HOST
from tests.security.test_gateway_attacks import signed, vend

TARGET = "DynamoDB_20120810."
OWN_KEY = {"pk": {"S": "acme"}, "sk": {"S": "1"}}


async def call(stack: GatewayStack, credentials: AwsCredentials, operation: str, payload: dict[str, Any] | bytes,
               extra_headers: Sequence[tuple[str, str]] = ()) -> tuple[int, str, Any]:
    """One signed gateway call: (status, Content-Type, body as JSON when it is JSON)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = signed(stack, credentials, target=TARGET + operation, body=body) + list(extra_headers)
    async with aiohttp.ClientSession(skip_auto_headers=("Content-Type",)) as http, \
            http.post(stack.gateway_url, data=body, headers=CIMultiDict(headers)) as response:
        text = await response.text()
        try:
            answer: Any = json.loads(text)
        except ValueError:
            answer = text
        return response.status, response.headers.get("Content-Type", ""), answer


def by_request(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for record in records:
        found.setdefault(record["request_id"], {})[record["event"]] = record
    return found


def assert_client_fault(status: int, content_type: str, answer: Any, reason: str | None = None) -> None:
    """DynamoDB's error form for a client's fault: HTTP 400 (boto3 does not retry it) with a `__type`."""
    assert status == 400, f"HTTP {status} for a client's fault (boto3 retries a 5xx): {answer!r}"
    assert content_type.startswith("application/x-amz-json-1.0"), (content_type, answer)
    assert isinstance(answer, dict) and "__type" in answer, answer
    if reason is not None:
        assert answer["idgate_reason"] == reason, answer


async def read_head(port: int, request: bytes, timeout: float = 3.0) -> bytes:
    """Send `request` and return what idgate answers first (up to 4 KB), without sending anything more."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request)
        await writer.drain()
        try:
            async with asyncio.timeout(timeout):
                return await reader.read(4096)
        except TimeoutError:
            return b"<no answer>"
    finally:
        writer.close()


# --- F1: one authenticated call freezes idgate ------------------------------------------------------------

TICK = 0.005


@contextmanager
def loop_watch() -> Iterator[list[float]]:
    """The longest the event loop went without running this ticker, in seconds (gaps[0])."""
    gaps = [0.0]
    loop = asyncio.get_running_loop()
    last = [time.perf_counter()]
    handle: list[asyncio.TimerHandle] = []

    def tick() -> None:      # a timer every 5 ms measures the loop's turns; it synchronizes nothing
        now = time.perf_counter()
        gaps[0] = max(gaps[0], now - last[0])
        last[0] = now
        handle[:] = [loop.call_later(TICK, tick)]

    handle.append(loop.call_later(TICK, tick))
    try:
        yield gaps
    finally:
        handle[0].cancel()


def _transact_writes(count: int) -> dict[str, Any]:
    element = {"Update": {
        "TableName": "orders", "Key": OWN_KEY,
        "UpdateExpression": "SET #a = :v, b = if_not_exists(b, :v) + :w REMOVE c, d ADD f :v",
        "ConditionExpression": "attribute_exists(a) AND (b > :v OR size(c) < :w) AND NOT contains(d, :v)",
        "ExpressionAttributeNames": {"#a": "a"}, "ExpressionAttributeValues": {":v": {"N": "1"}, ":w": {"N": "2"}}}}
    return {"TransactItems": [element] * count}


def _transact_statements(count: int) -> dict[str, Any]:
    statement = {"Statement": "UPDATE orders SET a = 1, b = 2 WHERE pk = ? AND sk = ? AND (c = 1 OR d IN [1, 2, 3])",
                 "Parameters": [{"S": "acme"}, {"S": "1"}]}
    return {"TransactStatements": [statement] * count}


def _huge_item(count: int) -> bytes:
    return ('{"TableName":"orders","Item":{"pk":{"S":"acme"},"sk":{"S":"1"},"x":{"L":['
            + ",".join(['{"M":{}}'] * count) + "]}}}").encode()


@pytest.mark.parametrize("operation, payload", [
    ("TransactWriteItems", _transact_writes(4000)),        # ~1.6 MB; DynamoDB takes at most 100 elements
    ("ExecuteTransaction", _transact_statements(4000)),    # ~0.6 MB; DynamoDB takes at most 100 statements
    ("PutItem", _huge_item(400_000)),                      # ~3.6 MB; DynamoDB's items are at most 400 KB
], ids=["TransactWriteItems", "ExecuteTransaction", "PutItem"])
async def test_one_call_stalls_the_event_loop(gateway: GatewayStack, operation: str, payload: Any) -> None:
    """HIGH.  Any holder of gateway credentials (any tenant, any role) freezes the whole idgate process:
    calls.decode (a Python object_pairs_hook on every JSON object) and touches() (both expression parsers,
    per element) run synchronously on the event loop over as many elements as fit in 16 MB, although
    DynamoDB itself accepts at most 100 transaction elements, 25 batch writes, 100 batch keys and 400 KB
    items.  Measured in-process on a full 16 MB body: TransactWriteItems ~18 s, ExecuteTransaction ~35 s,
    a PutItem of empty maps ~3 s of JSON decoding alone; every surface (reverse proxy, forward auth,
    credentials endpoint, other tenants' gateway calls) stops meanwhile.  Here a tenth of that is sent."""
    credentials = await vend(gateway)
    with loop_watch() as gaps:
        status, content_type, answer = await call(gateway, credentials, operation, payload)
    # Decoded on the loop, the PutItem's JSON alone stalls it for over a second; in a thread, under 0.1 s.
    assert gaps[0] < 0.5, f"the event loop stalled for {gaps[0]:.2f} s on one {operation} (HTTP {status})"


# --- F2: an unauthenticated client is asked for its body ------------------------------------------------

@pytest.mark.parametrize("authorization", [
    None,
    "AWS4-HMAC-SHA256 Credential=IDGk1_AAAAAAAAAAAAAAAA/20260101/us-east-1/dynamodb/aws4_request, "
    "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, Signature=" + "0" * 64,
], ids=["no-signature", "forged-credentials"])
async def test_unauthenticated_client_is_asked_for_its_body(gateway: GatewayStack, authorization: str | None) -> None:
    """MEDIUM.  The handler sends `100 Continue` and buffers up to 16 MB (max_body_bytes) before it checks
    anything of the signature, so a client with no credentials at all (or a made-up access key and token)
    makes idgate hold 16 MB per connection; feeding one byte every <30 s (read_timeout) keeps it held, and
    1024 connections per peer (4096 in all) make 16-64 GB.  Everything but the payload hash (the
    Authorization shape, scope, date, the token's seal and expiry) can be checked from the head alone,
    and proxy.edges._http.continue_if_expected promises "an unauthenticated client is never asked for its
    body"."""
    port = gateway.idgate.port
    head = (f"POST /.idgate/dynamodb HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            "Content-Type: application/x-amz-json-1.0\r\nX-Amz-Target: DynamoDB_20120810.GetItem\r\n"
            "X-Amz-Date: 20260101T000000Z\r\nX-Amz-Security-Token: AAAA\r\n"
            + (f"Authorization: {authorization}\r\n" if authorization else "")
            + "Expect: 100-continue\r\nContent-Length: 16000000\r\n\r\n")
    first = await read_head(port, head.encode())
    assert not first.startswith(b"HTTP/1.1 100"), "idgate asked a client without valid credentials for a 16 MB body"
    assert first.startswith(b"HTTP/1.1 400"), first[:200]


# --- F3: a wrongly typed ReturnValues crashes the decision, unaudited -----------------------------------

@pytest.mark.parametrize("operation, payload", [
    ("PutItem", {"TableName": "orders", "Item": OWN_KEY, "ReturnValues": []}),
    ("UpdateItem", {"TableName": "orders", "Key": OWN_KEY, "UpdateExpression": "SET a = :v",
                    "ExpressionAttributeValues": {":v": {"S": "x"}}, "ReturnValues": {"ALL_OLD": 1}}),
    ("DeleteItem", {"TableName": "orders", "Key": OWN_KEY, "ReturnValues": ["ALL_OLD"]}),
], ids=["PutItem-list", "UpdateItem-object", "DeleteItem-list"])
async def test_non_string_return_values_crash_unaudited(gateway: GatewayStack, operation: str,
                                                        payload: dict[str, Any]) -> None:
    """MEDIUM.  touches._returns_all tests `body.get("ReturnValues") in frozenset(...)`: a JSON list or
    object there raises TypeError (unhashable).  authorize_dynamodb catches IdgateError only, so the
    call is answered HTTP 500 (boto3 retries it) and leaves no decision record at all: an authenticated
    caller's refused call is missing from the audit.  (Not forwarded, so no data moves.)"""
    credentials = await vend(gateway)
    before = len(await gateway.records())
    status, content_type, answer = await call(gateway, credentials, operation, payload)
    records = (await gateway.records())[before:]
    assert_client_fault(status, content_type, answer, "invalid_dynamodb_request")
    assert [(r["event"], r["decision"]) for r in records] == [("decision", "deny")], records


# --- F4: SDK headers crash an allowed call between its decision and its forwarding -----------------------

@pytest.mark.parametrize("header", [
    ("amz-sdk-request", "attempt=\u00b2; max=3"),             # str.isdigit() is true, int() refuses it
    ("amz-sdk-request", "attempt=" + "9" * 5000),             # past int()'s 4300-digit limit
], ids=["superscript-digit", "5000-digits"])
async def test_sdk_request_header_crashes_after_allow(gateway: GatewayStack, header: tuple[str, str]) -> None:
    """MEDIUM.  proxy.edges.dynamodb._attempt parses the client's `amz-sdk-request` with
    `value.isdigit()` then `int(value)`; both values above pass isdigit and make int() raise ValueError.
    It runs after authorize_dynamodb has made the *allow* record durable and before _forward: the client
    gets HTTP 500 (boto3 retries), nothing is forwarded, and the audit holds an allow with no outcome."""
    credentials = await vend(gateway)
    before = len(await gateway.records())
    status, content_type, answer = await call(gateway, credentials, "GetItem",
                                              {"TableName": "orders", "Key": OWN_KEY}, [header])
    calls = by_request((await gateway.records())[before:])
    assert status != 500, f"HTTP 500 for the client's own header: {answer!r}"
    for events in calls.values():
        if events["decision"]["decision"] == "allow":
            assert "outcome" in events, "an allowed call has no outcome record (it was never forwarded)"


async def test_non_utf8_forwarded_header_crashes_after_allow(gateway: GatewayStack) -> None:
    """MEDIUM.  `amz-sdk-request` / `amz-sdk-invocation-id` are copied into the upstream request.  A value
    with a byte that is not UTF-8 (aiohttp keeps it as a surrogate escape) makes botocore's HTTPHeaders
    hold an email Header object, and resign() dies with AttributeError (not BotoCoreError): HTTP 500
    after a durable allow record, no outcome record, nothing forwarded."""
    credentials = await vend(gateway)
    body = json.dumps({"TableName": "orders", "Key": OWN_KEY}).encode()
    headers = signed(gateway, credentials, target=TARGET + "GetItem", body=body)
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
    request = (f"POST /.idgate/dynamodb HTTP/1.1\r\n{lines}Content-Length: {len(body)}\r\nConnection: close\r\n"
               .encode() + b"amz-sdk-invocation-id: 0b1d\xff\r\n\r\n" + body)
    before = len(await gateway.records())
    first = await read_head(gateway.idgate.port, request)
    calls = by_request((await gateway.records())[before:])
    assert not first.startswith(b"HTTP/1.1 500"), first[:300]
    for events in calls.values():
        if events["decision"]["decision"] == "allow":
            assert "outcome" in events, "an allowed call has no outcome record (it was never forwarded)"


# --- F5: a bad compressed body from anyone: HTTP 500, unaudited ------------------------------------------

async def test_corrupt_gzip_body_from_anyone_is_a_500(gateway: GatewayStack) -> None:
    """LOW-MEDIUM.  aiohttp decompresses request bodies (Content-Encoding is not refused at admission), and
    a corrupt gzip stream surfaces in _read_body as aiohttp's RequestPayloadError, which is no IdgateError:
    a client with no credentials at all gets HTTP 500 (logged as a handler crash with a traceback) and
    the refusal is not on the audit log.  (A valid gzip body is decided on and forwarded decompressed,
    which is consistent; but the signature must then cover the decompressed bytes, which no SDK does.)"""
    port = gateway.idgate.port
    junk = b"\x1f\x8b\x08\x00not really gzip at all"
    request = (f"POST /.idgate/dynamodb HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
               "Content-Type: application/x-amz-json-1.0\r\nX-Amz-Target: DynamoDB_20120810.GetItem\r\n"
               f"Content-Encoding: gzip\r\nContent-Length: {len(junk)}\r\nConnection: close\r\n\r\n").encode() + junk
    before = len(await gateway.records())
    first = await read_head(port, request)
    records = (await gateway.records())[before:]
    assert first.startswith(b"HTTP/1.1 400"), first[:300]
    assert b"__type" in first, first[:300]
    assert [(r["event"], r["decision"]) for r in records] == [("decision", "deny")], records


# --- F6: the decision record's table list is unbounded ---------------------------------------------------

@pytest.mark.parametrize("tables, reason", [(2000, "invalid_dynamodb_request"), (100, "action_not_granted")])
async def test_denial_record_lists_every_table_uncapped(gateway: GatewayStack, tables: int, reason: str) -> None:
    """LOW.  _gateway_record writes `dynamodb.tables = list(call.tables)` uncapped (touches, keys and
    attributes are capped): a BatchGetItem naming thousands of distinct, valid, ungranted table names is
    denied before DescribeTable, but its one decision record carries every name: ~1:1 with the body, so
    one 16 MB call is a 16 MB audit line (fsynced, hash-chained, shipped).  Here 2,000 names of 250
    characters: a ~0.5 MB record."""
    credentials = await vend(gateway)
    items = {f"t{i:05d}" + "x" * 244: {"Keys": [OWN_KEY]} for i in range(tables)}
    before = len(await gateway.records())
    status, content_type, answer = await call(gateway, credentials, "BatchGetItem", {"RequestItems": items})
    # Past DynamoDB's 100 tables the call is refused unread; within it, the record's list is capped.
    assert_client_fault(status, content_type, answer, reason)
    record = (await gateway.records())[before:][-1]
    size = len(json.dumps(record))
    assert size < 64 * 1024, f"one denial record is {size} bytes"


# --- F7: any tenant empties the shared key-schema cache at will ------------------------------------------

async def test_any_caller_forces_describe_table_at_will(gateway: GatewayStack) -> None:
    """LOW.  _forward drops the shared (account, table) key schema whenever DynamoDB's answer says "key
    element does not match the schema".  Any caller provokes that on its own item (an extra attribute in
    Key), so each such call makes the next call of anyone re-run DescribeTable: a tenant without
    dynamodb:DescribeTable drives the role's DescribeTable rate (a control-plane API with low limits;
    its throttling fails every tenant's next call with 503 key_schema_unavailable)."""
    credentials = await vend(gateway)
    gateway.moto.clear_recording()
    bad_key = {"TableName": "orders", "Key": {**OWN_KEY, "extra": {"S": "x"}}}
    for _ in range(10):
        status, _, answer = await call(gateway, credentials, "GetItem", bad_key)
        assert status == 400, answer
    describes = gateway.moto.recorded_targets().count(TARGET + "DescribeTable")
    assert describes <= 2, f"10 calls of one tenant made idgate call DescribeTable {describes} times"


# --- F8: PartiQL writes are not recorded as writes ------------------------------------------------------

@pytest.mark.parametrize("operation, payload", [
    ("ExecuteStatement", {"Statement": "INSERT INTO orders VALUE {'pk': 'acme', 'sk': 'p1'}"}),
    ("ExecuteTransaction", {"TransactStatements": [
        {"Statement": "INSERT INTO orders VALUE {'pk': 'acme', 'sk': 'p2'}"}]}),
    ("BatchExecuteStatement", {"Statements": [
        {"Statement": "INSERT INTO orders VALUE {'pk': 'acme', 'sk': 'p3'}"}]}),
], ids=["ExecuteStatement", "ExecuteTransaction", "BatchExecuteStatement"])
async def test_partiql_write_outcome_records_nothing_written(gateway: GatewayStack, operation: str,
                                                             payload: dict[str, Any]) -> None:
    """LOW.  gateway_records.outcome_view records `written` (count, keys, digest) only for the
    PutItem/UpdateItem/DeleteItem/BatchWriteItem/TransactWriteItems family: a PartiQL INSERT, UPDATE or
    DELETE that DynamoDB carried out has an outcome that says `returned: {count: 0}` and nothing about
    the item it wrote, while the same PutItem records `written`.  (BatchExecuteStatement's per-statement
    `Error` entries are not counted either: a batch whose statements all failed looks like success.)"""
    credentials = await vend(gateway)
    before = len(await gateway.records())
    status, _, answer = await call(gateway, credentials, operation, payload)
    assert status == 200, answer
    outcome = [r for r in (await gateway.records())[before:] if r["event"] == "outcome"][-1]
    written = outcome["dynamodb"].get("written")
    assert written is not None and written["count"] == 1, outcome["dynamodb"]


# --- F9/F10: redact_keys does not keep key values from the audit's readers -------------------------------

async def test_redacted_keys_are_recoverable_from_body_sha256(make_gateway_stack: GatewayFactory) -> None:
    """LOW-MEDIUM.  With `redact_keys: true` the touches carry HMAC-SHA256(redaction key, value), so a reader
    of the audit cannot test guesses; but the same record carries `body_sha256`, an unkeyed SHA-256 of the
    body.  SDK bodies are deterministic (botocore: json.dumps of the parameters in model order), so anyone
    with the audit log and a list of candidate keys (e-mail addresses, customer ids) confirms which one a
    call touched by hashing the candidate bodies; the operation, table and attribute names in the same
    record give the rest of the body.  The HMAC protects nothing while the plain digest is beside it."""
    stack = await make_gateway_stack(gateway={"hosts": [], "redact_keys": True})
    stack.moto.create_role("tenant")
    create_tables(stack.moto)
    credentials = await vend(stack)

    def boto3_body(order: str) -> bytes:     # what botocore sends for get_item(TableName=..., Key=...)
        return json.dumps({"TableName": "orders", "Key": {"pk": {"S": "acme"}, "sk": {"S": order}}}).encode()

    status, _, answer = await call(stack, credentials, "GetItem", boto3_body("order-7731"))
    assert status == 200, answer
    decision = [r for r in await stack.records() if r["event"] == "decision"][-1]["dynamodb"]
    assert decision["touches"][0]["keys"][0].startswith("hmac-sha256:")      # redaction is on
    guesses = [f"order-{n}" for n in range(7700, 7800)]
    digests = set(json.dumps(decision).split('"'))          # every string the record holds
    confirmed = [g for g in guesses if hashlib.sha256(boto3_body(g)).hexdigest() in digests]
    assert confirmed == [], f"the audit's body_sha256 confirms the redacted key {confirmed}"


async def test_redact_keys_without_a_redaction_key_records_plaintext(make_gateway_stack: GatewayFactory,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """LOW-MEDIUM.  `redaction_key` is optional in the key ring, and with `redact_keys: true` and a ring
    that lacks it the pipeline builds KeyRedactor(None): every partition and sort key goes to the audit in
    plaintext, with no error at startup or in the log.  An operator who asked for redaction gets none."""
    master = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("IDGATE_GATEWAY_KEYS", json.dumps({"active": "k1", "keys": {"k1": master}}))
    try:
        stack = await make_gateway_stack(gateway={"hosts": [], "redact_keys": True})
    except ConfigError:
        return                                  # refusing to start is a fix
    stack.moto.create_role("tenant")
    create_tables(stack.moto)
    credentials = await vend(stack)
    status, _, answer = await call(stack, credentials, "GetItem", {"TableName": "orders", "Key": OWN_KEY})
    assert status == 200, answer
    decision = [r for r in await stack.records() if r["event"] == "decision"][-1]["dynamodb"]
    assert decision["touches"][0]["keys"] != ["acme"], "redact_keys is on, yet the key is in the audit as is"
