"""Attacks on the DynamoDB gateway, one named test each: signatures, credentials, headers, targets and
bodies an attacker controls.  Each must get DynamoDB's error form with HTTP 400 (boto3 does not retry
it), reach nothing upstream (moto records no DynamoDB call), and leave an audited denial."""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import replace
from typing import Any

import pytest

from proxy.aws.credentials import AwsCredentials
from proxy.aws.gateway_tokens import issue
from tests.factories import make_gateway_session, make_key_ring
from tests.harness.gateway import GatewayFactory, GatewayStack, create_tables

OWN_KEY = json.dumps({"TableName": "orders", "Key": {"pk": {"S": "acme"}, "sk": {"S": "1"}}}).encode()


async def vend(stack: GatewayStack) -> AwsCredentials:
    return await stack.vend("svc-etl-acme", tenant="acme")


def signed(stack: GatewayStack, credentials: AwsCredentials, *, body: bytes = OWN_KEY, **kwargs: Any) -> list[tuple[str, str]]:
    return stack.signed(credentials, body=body, **kwargs)


async def send(stack: GatewayStack, headers: list[tuple[str, str]], body: bytes = OWN_KEY) -> tuple[int, dict[str, Any]]:
    return await stack.send(headers, body)


def with_header(headers: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    return [(n, value if n.lower() == name.lower() else v) for n, v in headers]


async def refused(stack: GatewayStack, headers: list[tuple[str, str]], body: bytes = OWN_KEY, *,
                  code: str, reason: str) -> None:
    before = len(await stack.records())
    status, answer = await send(stack, headers, body)
    assert status == 400, answer
    assert answer["__type"].rpartition("#")[2] == code, answer
    assert answer["idgate_reason"] == reason, answer
    # Nothing of the caller's reaches DynamoDB (idgate's own DescribeTable, to learn a table's keys, may).
    forwarded = [t for t in stack.moto.recorded_targets() if t != "DynamoDB_20120810.DescribeTable"]
    assert forwarded == [], "a refused call reached DynamoDB"
    records = (await stack.records())[before:]
    assert [(r["event"], r["decision"], r["reasons"]) for r in records] == [("decision", "deny", [reason])]


async def test_a_genuine_call_passes(gateway: GatewayStack) -> None:
    """The control: the same helpers with nothing changed are allowed and reach DynamoDB."""
    credentials = await vend(gateway)
    status, answer = await send(gateway, signed(gateway, credentials))
    assert (status, answer) == (200, {})
    assert gateway.moto.recorded_targets() == ["DynamoDB_20120810.DescribeTable", "DynamoDB_20120810.GetItem"]


async def test_tampered_signature(gateway: GatewayStack) -> None:
    headers = signed(gateway, await vend(gateway))
    authorization = dict(headers)["Authorization"]
    flipped = authorization[:-1] + ("0" if authorization[-1] != "0" else "1")
    await refused(gateway, with_header(headers, "Authorization", flipped), code="InvalidSignatureException",
                  reason="signature_mismatch")


async def test_tampered_body(gateway: GatewayStack) -> None:
    headers = signed(gateway, await vend(gateway))
    other = OWN_KEY.replace(b"acme", b"evil")
    await refused(gateway, headers, other, code="InvalidSignatureException", reason="signature_mismatch")


async def test_tampered_target(gateway: GatewayStack) -> None:
    headers = signed(gateway, await vend(gateway))
    await refused(gateway, with_header(headers, "X-Amz-Target", "DynamoDB_20120810.DeleteItem"),
                  code="InvalidSignatureException", reason="signature_mismatch")


@pytest.mark.parametrize("token", ["", "AAAA", base64.urlsafe_b64encode(secrets.token_bytes(200)).decode().rstrip("=")])
async def test_forged_session_token(gateway: GatewayStack, token: str) -> None:
    credentials = await vend(gateway)
    await refused(gateway, signed(gateway, replace(credentials, session_token=token or "x")),
                  code="UnrecognizedClientException", reason="invalid_gateway_token")


async def test_session_token_of_another_key_ring(gateway: GatewayStack) -> None:
    forged = issue(make_key_ring({"k1": secrets.token_bytes(32)}), make_gateway_session())
    await refused(gateway, signed(gateway, forged), code="UnrecognizedClientException", reason="invalid_gateway_token")


async def test_expired_session_token(gateway: GatewayStack) -> None:
    assert gateway.idgate.services.gateway is not None
    expired = issue(gateway.idgate.services.gateway.ring, make_gateway_session(now=time.time() - 7200, lifetime=3600))
    await refused(gateway, signed(gateway, expired), code="ExpiredTokenException", reason="gateway_token_expired")


async def test_session_token_moved_to_another_access_key(gateway: GatewayStack) -> None:
    first, second = await vend(gateway), await vend(gateway)
    swapped = AwsCredentials(second.access_key_id, first.secret_access_key, first.session_token, first.expiration)
    await refused(gateway, signed(gateway, swapped), code="UnrecognizedClientException", reason="invalid_gateway_token")


@pytest.mark.parametrize("header", ["X-Amz-Target", "Content-Type", "X-Amz-Security-Token"])
async def test_a_required_header_left_unsigned(gateway: GatewayStack, header: str) -> None:
    headers = signed(gateway, await vend(gateway))
    name = header.lower()
    authorization = dict(headers)["Authorization"]
    signed_names = authorization.split("SignedHeaders=")[1].split(",")[0]
    kept = ";".join(n for n in signed_names.split(";") if n != name)
    await refused(gateway, with_header(headers, "Authorization", authorization.replace(signed_names, kept)),
                  code="InvalidSignatureException", reason="unsigned_header")


@pytest.mark.parametrize("header", ["X-Amz-Date", "X-Amz-Target", "X-Amz-Security-Token"])
async def test_a_signing_header_sent_twice(gateway: GatewayStack, header: str) -> None:
    headers = signed(gateway, await vend(gateway))
    value = dict(headers)[header]
    await refused(gateway, [*headers, (header, value)], code="InvalidSignatureException",
                  reason="duplicate_signed_header")


async def test_missing_signature(gateway: GatewayStack) -> None:
    headers = [(n, v) for n, v in signed(gateway, await vend(gateway)) if n != "Authorization"]
    await refused(gateway, headers, code="MissingAuthenticationTokenException", reason="missing_signature")


@pytest.mark.parametrize("region, service", [("eu-west-1", "dynamodb"), ("us-east-1", "s3"), ("us-east-1", "sts")])
async def test_a_signature_for_another_region_or_service(gateway: GatewayStack, region: str, service: str) -> None:
    headers = signed(gateway, await vend(gateway), region=region, service=service)
    await refused(gateway, headers, code="InvalidSignatureException", reason="wrong_signature_scope")


@pytest.mark.parametrize("offset", [-400, 400])
async def test_a_replay_outside_the_clock_skew(gateway: GatewayStack, offset: int) -> None:
    headers = signed(gateway, await vend(gateway), now=time.time() + offset)
    await refused(gateway, headers, code="InvalidSignatureException", reason="signature_expired")


async def test_a_signature_for_another_host(make_gateway_stack: GatewayFactory) -> None:
    stack = await make_gateway_stack(gateway={"hosts": ["dynamodb.idgate.internal"]})
    stack.moto.create_role("tenant")
    create_tables(stack.moto)
    stack.moto.clear_recording()
    credentials = await vend(stack)
    headers = signed(stack, credentials)      # signed for 127.0.0.1:<port>, which the gateway does not serve
    await refused(stack, headers, code="InvalidSignatureException", reason="wrong_gateway_host")
    forged_host = with_header(signed(stack, credentials), "Host", "dynamodb.idgate.internal")
    await refused(stack, forged_host, code="InvalidSignatureException", reason="signature_mismatch")


async def test_unknown_target(gateway: GatewayStack) -> None:
    headers = signed(gateway, await vend(gateway), target="DynamoDB_20120810.GetItemz")
    await refused(gateway, headers, code="UnknownOperationException", reason="unknown_operation")


@pytest.mark.parametrize("body", [b"{", b'{"TableName":"orders","TableName":"secrets","Key":{}}', b"[]",
                                  b'{"TableName": NaN}'])
async def test_malformed_json(gateway: GatewayStack, body: bytes) -> None:
    headers = signed(gateway, await vend(gateway), body=body)
    await refused(gateway, headers, body, code="SerializationException", reason="malformed_json")


async def test_a_body_over_dynamodbs_limit(gateway: GatewayStack) -> None:
    body = b" " * (16 * 1024 * 1024 + 1)
    headers = signed(gateway, await vend(gateway), body=body)
    await refused(gateway, headers, body, code="ValidationException", reason="body_too_large")


@pytest.mark.parametrize("payload, reason", [
    ({"TableName": "orders", "Key": {"pk": {"S": "acme"}, "sk": {"S": "1"}},
      "ProjectionExpression": "pk, #hidden", "ExpressionAttributeNames": {"#n": "pk"}}, "invalid_dynamodb_request"),
    ({"TableName": "orders", "Key": {"pk": {"S": "acme"}, "sk": {"S": "1"}}, "AttributesToGet": ["x"]},
     "invalid_dynamodb_request"),
    ({"TableName": "orders", "Key": {"pk": {"S": "globex"}, "sk": {"S": "1"}}}, "leading_key_not_granted"),
    ({"TableName": "arn:aws:dynamodb:us-east-1:999999999999:table/orders",
      "Key": {"pk": {"S": "acme"}, "sk": {"S": "1"}}}, "foreign_table"),
])
async def test_calls_idgate_will_not_decide_on(gateway: GatewayStack, payload: dict[str, Any], reason: str) -> None:
    body = json.dumps(payload).encode()
    headers = signed(gateway, await vend(gateway), body=body)
    code = "ValidationException" if reason == "invalid_dynamodb_request" else "AccessDeniedException"
    await refused(gateway, headers, body, code=code, reason=reason)
