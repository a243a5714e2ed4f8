"""The credential broker against real components: tokens from the node OpenID Provider, moto as STS.
Least privilege is shown by what moto received (the Policy parameter of AssumeRole, recorded by moto)
and by idgate's own decisions and audit records."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.credentials import ContainerProvider
from botocore.exceptions import CredentialRetrievalError
from botocore.utils import ContainerMetadataFetcher

from tests.harness.broker import BrokerFactory, BrokerStack
from tests.harness.moto import ACCOUNT

ORDERS_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{
        "Effect": "Allow",
        "Action": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query", "dynamodb:UpdateItem",
                   "dynamodb:BatchWriteItem"],
        "Resource": [f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/orders"],
        "Condition": {
            "ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["svc-etl-7"],
                                          "dynamodb:Attributes": ["pk", "sk", "status", "amount"]},
            "Null": {"dynamodb:LeadingKeys": "false"},
            "StringEqualsIfExists": {"dynamodb:Select": "SPECIFIC_ATTRIBUTES",
                                     "dynamodb:ReturnValues": ["NONE", "UPDATED_OLD", "UPDATED_NEW"]},
        },
    }],
}


async def test_a_raw_token_gets_container_credentials_and_a_durable_audit_record(broker_stack: BrokerStack) -> None:
    answer = await broker_stack.fetch(broker_stack.op_token("svc-report"))
    assert answer.status == 200, answer.text
    assert set(answer.body) == {"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}
    assert answer.headers["Cache-Control"] == "no-store"
    expires = datetime.strptime(answer.body["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert (expires - datetime.now(UTC)).total_seconds() >= 30 * 60

    [sent] = broker_stack.moto.recorded_sts_calls("AssumeRole")
    [record] = await broker_stack.credential_decisions()
    assert record["decision"] == "allow" and record["rule"] == "reports-read"
    assert record["identity"]["sub"] == "svc-report"
    aws = record["aws"]
    assert aws["role_arn"] == f"arn:aws:iam::{ACCOUNT}:role/reporting" and aws["source"] == "sts"
    assert aws["tables"] == ["reports"]          # what `audit query --table reports` finds the vend by
    assert aws["session_policy_sha256"] == hashlib.sha256(sent["Policy"].encode()).hexdigest()
    assert aws["access_key_id"] == answer.body["AccessKeyId"] and aws["expiration"] == answer.body["Expiration"]
    audit_text = broker_stack.idgate.services.config.audit.path.read_text()
    assert answer.body["SecretAccessKey"] not in audit_text and answer.body["Token"] not in audit_text


async def test_the_session_policy_sent_to_sts_grants_exactly_the_rule(broker_stack: BrokerStack) -> None:
    answer = await broker_stack.fetch(broker_stack.op_token(), role="etl")
    assert answer.status == 200, answer.text
    [sent] = broker_stack.moto.recorded_sts_calls("AssumeRole")
    assert sent["RoleArn"] == f"arn:aws:iam::{ACCOUNT}:role/etl"
    assert json.loads(sent["Policy"]) == ORDERS_POLICY
    assert sent["DurationSeconds"] == "3600"
    assert sent["RoleSessionName"].startswith("svc-etl-7-") and sent["SourceIdentity"] == sent["RoleSessionName"]
    tags = {sent[f"Tags.member.{i}.Key"]: sent[f"Tags.member.{i}.Value"] for i in (1, 2)}
    assert tags == {"idgate:issuer": broker_stack.op.issuer, "idgate:subject": "svc-etl-7"}


async def test_bearer_scheme_works_and_the_second_request_is_a_cache_hit(broker_stack: BrokerStack) -> None:
    token = broker_stack.op_token("svc-report")
    first = await broker_stack.fetch(token, scheme="Bearer ")
    second = await broker_stack.fetch(broker_stack.op_token("svc-report"))   # a new token, same caller
    assert first.status == second.status == 200
    assert first.body["AccessKeyId"] == second.body["AccessKeyId"]
    assert len(broker_stack.moto.recorded_sts_calls("AssumeRole")) == 1
    assert [r["aws"]["source"] for r in await broker_stack.credential_decisions()] == ["sts", "cache"]


async def test_several_roles_need_a_choice_and_the_choice_scopes_the_policy(broker_stack: BrokerStack) -> None:
    token = broker_stack.op_token()
    unchosen = await broker_stack.fetch(token)
    assert unchosen.status == 403 and unchosen.body["code"] == "forbidden" and "?role=" in unchosen.body["message"]
    auditor = await broker_stack.fetch(token, role="auditor")
    assert auditor.status == 200
    [sent] = broker_stack.moto.recorded_sts_calls("AssumeRole")
    statement = json.loads(sent["Policy"])["Statement"]
    assert statement == [{"Effect": "Allow", "Action": ["dynamodb:GetItem", "dynamodb:Query"],
                          "Resource": [f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/invoices",
                                       f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/invoices/index/by-date"]}]
    by_arn = await broker_stack.fetch(token, role=f"arn:aws:iam::{ACCOUNT}:role/auditor")
    assert by_arn.body["AccessKeyId"] == auditor.body["AccessKeyId"]
    reasons = [r["reasons"] for r in await broker_stack.credential_decisions()]
    assert reasons == [["role_required"], ["matched"], ["matched"]]


async def test_concurrent_callers_with_one_identity_cause_one_sts_call(broker_stack: BrokerStack) -> None:
    tokens = [broker_stack.op_token("svc-report") for _ in range(3)]
    answers = await asyncio.gather(*(broker_stack.fetch(tokens[i % 3]) for i in range(60)))
    assert {a.status for a in answers} == {200}
    assert len({a.body["AccessKeyId"] for a in answers}) == 1
    assert len(broker_stack.moto.recorded_sts_calls("AssumeRole")) == 1
    assert broker_stack.idgate.services.broker is not None and broker_stack.idgate.services.broker.sts_calls == 1
    registry = broker_stack.idgate.services.metrics.registry
    assert registry.get_sample_value("idgate_sts_calls_total", {"result": "ok"}) == 1
    # Every caller waited for (and shares) the one STS answer.
    assert registry.get_sample_value("idgate_credentials_vended_total", {"source": "sts"}) == 60


async def test_web_identity_rules_pass_the_callers_token_to_sts(make_broker_stack: BrokerFactory) -> None:
    policy = """
rules:
  - id: federated
    who: {issuer: OP_ISSUER, subject: svc-report}
    aws:
      role_arn: arn:aws:iam::123456789012:role/federated
      web_identity: true
      dynamodb: [{table: reports, actions: [Query]}]
"""
    stack = await make_broker_stack(policy=policy)
    token = stack.op_token("svc-report")
    answer = await stack.fetch(token)
    assert answer.status == 200, answer.text
    assert stack.moto.recorded_sts_calls("AssumeRole") == []
    [sent] = stack.moto.recorded_sts_calls("AssumeRoleWithWebIdentity")
    assert sent["WebIdentityToken"] == token and sent["RoleArn"].endswith(":role/federated")
    assert json.loads(sent["Policy"])["Statement"][0]["Action"] == ["dynamodb:Query"]
    [record] = await stack.credential_decisions()
    assert record["aws"]["web_identity"] is True and token not in json.dumps(record)


async def test_botocore_container_provider_reads_the_answer_and_surfaces_a_denial(broker_stack: BrokerStack,
                                                                                  tmp_path: Path) -> None:
    """botocore's own provider and fetcher (in a thread; idgate runs on this loop): a vend becomes
    container-role credentials, and a denial's JSON {"code","message"} reaches the caller's error."""
    token_file = tmp_path / "token"

    def load() -> Any:
        environ = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": broker_stack.credentials_url,
                   "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file)}
        # No 1 s sleeps between botocore's three attempts: idgate answers a denial the same way each time.
        return ContainerProvider(environ, ContainerMetadataFetcher(sleep=lambda _seconds: None)).load()

    token_file.write_text(broker_stack.op_token("svc-report"))
    credentials = await asyncio.to_thread(load)
    assert credentials.method == "container-role" and credentials.access_key.startswith("ASIA")

    token_file.write_text(broker_stack.op_token("svc-etl-7"))     # two roles, none chosen
    with pytest.raises(CredentialRetrievalError) as caught:
        await asyncio.to_thread(load)
    assert "several roles are granted" in str(caught.value) and '"code": "forbidden"' in str(caught.value)
