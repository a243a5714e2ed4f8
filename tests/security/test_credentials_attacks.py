"""Bad input at the credentials endpoint, one named test per case.  Each must answer a clear status with a
JSON {"code","message"} body and no credentials, leave an audit record, and (unless STS itself is the
fault) never reach STS."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from typing import Any

import pytest

from tests.harness.broker import Answer, BrokerFactory, BrokerStack
from tests.harness.fake_sts import FakeSts, fake_sts
from tests.harness.servers import local_issuer, refused_port

CREDENTIAL_FIELDS = {"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}


async def assert_denied(stack: BrokerStack, answer: Answer, status: int, reason: str, *, sts_calls: int = 0) -> dict[str, Any]:
    """The common checks; returns the audit record of the denial."""
    assert answer.status == status, answer.text
    assert set(answer.body) == {"code", "message", "request_id"}, answer.body
    assert not CREDENTIAL_FIELDS & set(answer.body) and "ASIA" not in answer.text
    records = await stack.credential_decisions()
    assert records, "the denial is on the audit log"
    record = records[-1]
    assert record["decision"] == "deny" and record["reasons"] == [reason], record
    assert record["request_id"] == answer.body["request_id"]
    if sts_calls == 0:
        assert stack.moto.recorded_sts_calls("AssumeRole") == []
    return record


# -- tokens ------------------------------------------------------------------------------------------

async def test_missing_token(broker_stack: BrokerStack) -> None:
    answer = await broker_stack.fetch(None)
    await assert_denied(broker_stack, answer, 401, "missing_token")
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


async def test_expired_token(broker_stack: BrokerStack) -> None:
    from proxy.dev.issuer import DemoIdentity

    token = broker_stack.dev.issuer.mint(DemoIdentity("svc-etl-7", ("data-eng",), {"tenant": "acme"}), lifetime=-120)
    await assert_denied(broker_stack, await broker_stack.fetch(token), 401, "token_expired")


async def test_wrong_audience_token(broker_stack: BrokerStack) -> None:
    token = broker_stack.op.token("svc-etl-7", "https://billing.internal")   # a real token, for another API
    await assert_denied(broker_stack, await broker_stack.fetch(token), 401, "bad_audience")


async def test_unknown_issuer_token(broker_stack: BrokerStack) -> None:
    async with local_issuer("broker-api") as stranger:
        token = stranger.token("svc-etl-7", ("data-eng",), tenant="acme")
        answer = await broker_stack.fetch(token)
    record = await assert_denied(broker_stack, answer, 401, "unknown_issuer")
    assert record["identity"] is None


async def test_token_in_another_scheme(broker_stack: BrokerStack) -> None:
    answer = await broker_stack.fetch(broker_stack.op_token(), scheme="Basic ")
    await assert_denied(broker_stack, answer, 401, "unsupported_scheme")


async def test_garbage_instead_of_a_token(broker_stack: BrokerStack) -> None:
    answer = await broker_stack.fetch("not a jwt {}")
    await assert_denied(broker_stack, answer, 401, "unsupported_scheme")
    answer = await broker_stack.fetch("abc<>def")
    await assert_denied(broker_stack, answer, 400, "malformed_authorization")


# -- policy --------------------------------------------------------------------------------------------

async def test_identity_with_no_aws_rule(broker_stack: BrokerStack) -> None:
    token = broker_stack.dev.token("svc-web-1", ("web",), tenant="acme")
    record = await assert_denied(broker_stack, await broker_stack.fetch(token), 403, "no_aws_rule")
    assert record["identity"]["sub"] == "svc-web-1" and record["rule"] is None


async def test_role_not_granted(broker_stack: BrokerStack) -> None:
    token = broker_stack.dev.token("svc-etl-7", ("data-eng",), tenant="acme")
    answer = await broker_stack.fetch(token, role="admin")
    await assert_denied(broker_stack, answer, 403, "role_not_granted")


async def test_role_of_another_identity(broker_stack: BrokerStack) -> None:
    # `etl` exists and svc-etl-7 may take it; svc-report may not.
    answer = await broker_stack.fetch(broker_stack.op_token("svc-report"), role="etl")
    record = await assert_denied(broker_stack, answer, 403, "role_not_granted")
    assert record["target"]["role"] == "etl" and "aws" in record and "access_key_id" not in record["aws"]


@pytest.mark.parametrize(("claims", "reason"), [
    ({}, "claim_missing"),
    ({"tenant": 7}, "claim_not_string"),
    ({"tenant": ["acme", "globex"]}, "claim_not_string"),
    ({"tenant": ""}, "claim_empty"),
    ({"tenant": "*"}, "claim_unsafe"),
    ({"tenant": "${aws:userid}"}, "claim_unsafe"),
])
async def test_claim_template_that_cannot_be_filled(broker_stack: BrokerStack, claims: dict[str, Any],
                                                    reason: str) -> None:
    token = broker_stack.dev.token("svc-etl-7", ("data-eng",), **claims)
    answer = await broker_stack.fetch(token)
    record = await assert_denied(broker_stack, answer, 403, reason)
    assert record["rule"] == "tenant-rows" and "session_policy_sha256" not in record["aws"]
    for value in claims.values():
        if isinstance(value, str) and value:
            assert value not in answer.text


async def test_claim_values_cannot_inject_into_the_session_policy(broker_stack: BrokerStack) -> None:
    hostile = 'acme"]},"Resource":["arn:aws:dynamodb:us-east-1:123456789012:table/other'
    token = broker_stack.dev.token("svc-etl-7", ("data-eng",), tenant=hostile)
    answer = await broker_stack.fetch(token)
    assert answer.status == 200, answer.text
    [sent] = broker_stack.moto.recorded_sts_calls("AssumeRole")
    [statement] = json.loads(sent["Policy"])["Statement"]
    assert statement["Resource"] == ["arn:aws:dynamodb:us-east-1:123456789012:table/orders"]
    assert statement["Condition"]["ForAllValues:StringEquals"] == {"dynamodb:LeadingKeys": [hostile]}


# -- request shape -------------------------------------------------------------------------------------

async def test_two_role_parameters(broker_stack: BrokerStack) -> None:
    answer = await broker_stack.fetch(broker_stack.op_token(), query="?role=etl&role=auditor")
    await assert_denied(broker_stack, answer, 400, "bad_query")


async def test_unexpected_query_parameter(broker_stack: BrokerStack) -> None:
    answer = await broker_stack.fetch(broker_stack.op_token("svc-report"), query="?role=reporting&debug=1")
    await assert_denied(broker_stack, answer, 400, "bad_query")


async def test_two_authorization_headers(broker_stack: BrokerStack) -> None:
    token = broker_stack.op_token("svc-report")
    async with broker_stack.http.get(broker_stack.credentials_url,
                                     headers=[("Authorization", token), ("Authorization", token)]) as response:
        answer = Answer(response.status, await response.json(), "", dict(response.headers))
    await assert_denied(broker_stack, answer, 400, "duplicate_authorization")


async def test_post_is_refused(broker_stack: BrokerStack) -> None:
    async with broker_stack.http.post(broker_stack.credentials_url,
                                      headers={"Authorization": broker_stack.op_token("svc-report")}) as response:
        answer = Answer(response.status, await response.json(), "", dict(response.headers))
    await assert_denied(broker_stack, answer, 400, "method_not_allowed")


# -- STS faults ----------------------------------------------------------------------------------------

async def broker_on(make: BrokerFactory, exits: AsyncExitStack, **sts: Any) -> tuple[BrokerStack, FakeSts]:
    fake = await exits.enter_async_context(fake_sts(**sts))
    stack = await make(aws={"sts_endpoint": fake.url, "sts_timeout": 0.5})
    return stack, fake


async def test_sts_down(make_broker_stack: BrokerFactory) -> None:
    with refused_port() as port:
        stack = await make_broker_stack(aws={"sts_endpoint": f"http://127.0.0.1:{port}", "sts_timeout": 0.5})
        answer = await stack.fetch(stack.op_token("svc-report"))
    record = await assert_denied(stack, answer, 503, "sts_unreachable")
    assert record["rule"] == "reports-read" and record["aws"]["role_arn"].endswith(":role/reporting")


async def test_sts_slow(make_broker_stack: BrokerFactory) -> None:
    async with AsyncExitStack() as exits:
        stack, fake = await broker_on(make_broker_stack, exits, then="hang")
        answer = await stack.fetch(stack.op_token("svc-report"))
        await assert_denied(stack, answer, 503, "sts_timeout")
        assert fake.actions == ["AssumeRole"]       # one attempt: a timeout is not retried


async def test_sts_throttling_that_passes_is_retried_with_backoff(make_broker_stack: BrokerFactory) -> None:
    async with AsyncExitStack() as exits:
        stack, fake = await broker_on(make_broker_stack, exits, script=["Throttling", "RequestLimitExceeded"])
        answer = await stack.fetch(stack.op_token("svc-report"))
        assert answer.status == 200 and answer.body["AccessKeyId"].startswith("ASIAFAKE")
        assert fake.actions == ["AssumeRole"] * 3


async def test_sts_throttling_that_persists(make_broker_stack: BrokerFactory) -> None:
    async with AsyncExitStack() as exits:
        stack, fake = await broker_on(make_broker_stack, exits, then="Throttling")
        answer = await stack.fetch(stack.op_token("svc-report"))
        await assert_denied(stack, answer, 503, "sts_throttled")
        assert len(fake.actions) == 4


async def test_sts_answers_with_expired_credentials(make_broker_stack: BrokerFactory) -> None:
    async with AsyncExitStack() as exits:
        stack, _ = await broker_on(make_broker_stack, exits, then="expired")
        answer = await stack.fetch(stack.op_token("svc-report"))
        record = await assert_denied(stack, answer, 503, "sts_expired_credentials")
        assert "access_key_id" not in record["aws"]


@pytest.mark.parametrize(("code", "status", "reason"), [
    ("AccessDenied", 403, "sts_access_denied"),
    ("ExpiredToken", 503, "sts_base_credentials"),
    ("PackedPolicyTooLarge", 403, "session_policy_too_large"),
])
async def test_sts_refusals(make_broker_stack: BrokerFactory, code: str, status: int, reason: str) -> None:
    async with AsyncExitStack() as exits:
        stack, fake = await broker_on(make_broker_stack, exits, then=code)
        answer = await stack.fetch(stack.op_token("svc-report"))
        await assert_denied(stack, answer, status, reason)
        assert "fake STS" not in answer.text and "arn:" not in answer.text
        assert len(fake.actions) == 1
