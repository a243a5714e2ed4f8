"""The DynamoDB gateway end to end: real boto3 workers (low-level client and Table resource) whose only AWS
settings are idgate's container-credentials URL, a token file and AWS_ENDPOINT_URL_DYNAMODB; moto as STS
and DynamoDB behind idgate.  A tenant restricted to `leading_keys: ["${claims.tenant}"]` works on its own
items and is refused another tenant's everywhere (a single call, a batch, a transaction, PartiQL), and
every call leaves the two audit records the README describes, on a chain that verifies."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from proxy.audit.chain import verify_files
from tests.harness.gateway import GATEWAY_POLICY, GatewayFactory, GatewayStack, create_tables
from tests.harness.moto import MotoServer, sts_client_factory

OWN_STEPS = ("credentials", "client_crud", "resource_batch_and_pages", "transactions", "partiql", "lsi_query",
             "invoices_named_columns")
# Each is refused by idgate with DynamoDB's AccessDeniedException (HTTP 400: boto3 does not retry it).
REFUSED = {
    "other_get": "leading_key_not_granted",
    "other_batch_write": "leading_key_not_granted",
    "other_batch_get": "leading_key_not_granted",
    "other_transaction": "leading_key_not_granted",
    "other_condition_check": "leading_key_not_granted",
    "other_partiql": "leading_key_not_granted",
    "other_partiql_transaction": "leading_key_not_granted",
    "forbidden_table_quoted": "action_not_granted",
    "forbidden_table_arn": "action_not_granted",
    "scan": "action_not_granted",
    "gsi_query": "unmapped_index",
    "key_in_filter": "leading_key_not_granted",
    "invoices_all_columns": "all_attributes",
    "invoices_whole_put": "whole_item_write",
    "invoices_hidden_column": "attribute_not_granted",
    "secrets_get": "action_not_granted",
    "describe_orders": "action_not_granted",
    "list_tables": "action_not_granted",
}


def by_step(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["step"]: r for r in results}


def pairs(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for record in records:
        found.setdefault(record["request_id"], {})[record["event"]] = record
    return found


async def test_tenant_works_on_its_own_items_with_boto3(gateway_stack: GatewayStack) -> None:
    token = gateway_stack.token_file("acme", "svc-etl-acme", tenant="acme")
    results = by_step(await gateway_stack.run_worker(token, "acme", *OWN_STEPS))
    failed = {name: r for name, r in results.items() if not r["ok"]}
    assert not failed, [(n, r.get("code"), r.get("message")) for n, r in failed.items()]
    assert results["credentials"]["data"]["method"] == "container-role"
    assert results["credentials"]["data"]["access_key"].startswith("IDG")   # idgate's, not an AWS key
    assert results["client_crud"]["data"] == "shipped"
    assert results["resource_batch_and_pages"]["data"] == {"get": "new", "pages": 5, "items": 30}
    assert results["transactions"]["data"] == "new"
    assert results["partiql"]["data"] == {"rows": 1, "batch_status": "done"}
    assert results["invoices_named_columns"]["data"] == "12"

    # The items are really in DynamoDB (moto), written through idgate's re-signed calls.
    direct = gateway_stack.moto.client("dynamodb")
    assert direct.get_item(TableName="orders", Key={"pk": {"S": "acme"}, "sk": {"S": "b29"}})["Item"]["status"] == {"S": "batched"}

    records = await gateway_stack.records()
    calls = pairs(records)
    assert calls, "no gateway records"
    for request_id, events in calls.items():
        decision, outcome = events["decision"], events.get("outcome")
        assert decision["decision"] == "allow", decision
        assert outcome is not None, f"no outcome record for {request_id}"
        assert outcome["dynamodb"]["status"] == 200
        assert decision["dynamodb"]["access_key_id"].startswith("IDG")
        assert decision["identity"]["sub"] == "svc-etl-acme"
        for touch in decision["dynamodb"]["touches"]:
            assert touch["keys"] == ["acme"], touch
            assert touch["rule"] == "tenant-orders"
    operations = {e["decision"]["dynamodb"]["operation"] for e in calls.values()}
    assert {"PutItem", "UpdateItem", "GetItem", "DeleteItem", "BatchWriteItem", "Query", "TransactWriteItems",
            "TransactGetItems", "ExecuteStatement", "BatchExecuteStatement", "ExecuteTransaction"} <= operations
    # Writes name what they wrote; reads what came back.
    batch = next(e for e in calls.values() if e["decision"]["dynamodb"]["operation"] == "BatchWriteItem")
    assert batch["outcome"]["dynamodb"]["written"]["count"] == 25
    statements = [e for e in calls.values() if e["decision"]["dynamodb"]["operation"] == "ExecuteStatement"]
    insert = statements[0]["outcome"]["dynamodb"]        # the INSERT: what it wrote, by key
    assert (insert["written"]["count"], insert["written"]["keys"]) == (1, [["orders", "acme", "p1"]])
    get = next(e for e in calls.values() if e["decision"]["dynamodb"]["operation"] == "GetItem")
    assert get["outcome"]["dynamodb"]["returned"]["keys"][0][:2] == ["orders", "acme"]
    assert verify_files([gateway_stack.idgate.services.config.audit.path]).ok


async def test_another_tenants_items_are_refused_everywhere(gateway_stack: GatewayStack) -> None:
    token = gateway_stack.token_file("acme", "svc-etl-acme", tenant="acme")
    results = by_step(await gateway_stack.run_worker(token, "acme", *REFUSED, "own_mixed_written"))
    for step, reason in REFUSED.items():
        result = results[step]
        assert not result["ok"], result
        assert (result["code"], result["status"]) == ("AccessDeniedException", 400), result
    assert results["own_mixed_written"] == {"step": "own_mixed_written", "ok": True, "data": False}

    records = await gateway_stack.records()
    denials = [r for r in records if r["event"] == "decision" and r["decision"] == "deny"]
    assert [r["reasons"][0] for r in denials] == list(REFUSED.values())
    # A refused call is never forwarded: no outcome record carries its request id.
    outcomes = {r["request_id"] for r in records if r["event"] == "outcome"}
    refused_ids = {r["request_id"] for r in denials}
    assert not refused_ids & outcomes
    assert verify_files([gateway_stack.idgate.services.config.audit.path]).ok


async def test_moto_checking_signatures_accepts_what_idgate_re_signs(make_gateway_stack: GatewayFactory,
                                                                     moto: MotoServer) -> None:
    """With moto's reset-auth on, moto verifies every signature and IAM policy: idgate's calls pass only
    because idgate re-signs them with the STS credentials moto itself issued for the tenant role."""
    iam = moto.client("iam")
    user = iam.create_user(UserName="idgate")["User"]["Arn"]
    keys = iam.create_access_key(UserName="idgate")["AccessKey"]
    iam.put_user_policy(UserName="idgate", PolicyName="assume", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*",
                                                "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]}]}))
    moto.create_role("tenant", trusted=user)      # moto matches the trusted principal exactly
    iam.put_role_policy(RoleName="tenant", PolicyName="tables", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "dynamodb:*", "Resource": "*"}]}))
    create_tables(moto)
    stack = await make_gateway_stack(sts_client=sts_client_factory(
        aws_access_key_id=keys["AccessKeyId"], aws_secret_access_key=keys["SecretAccessKey"]))
    token = stack.token_file("acme", "svc-etl-acme", tenant="acme")
    with moto.checking_signatures():
        results = by_step(await stack.run_worker(token, "acme", "client_crud", "other_get"))
        # The control: a real access key with a wrong secret is refused by moto itself.
        with pytest.raises(ClientError) as refused:
            moto.client("dynamodb", aws_access_key_id=keys["AccessKeyId"], aws_secret_access_key="wrong").list_tables()
    assert results["client_crud"] == {"step": "client_crud", "ok": True, "data": "shipped"}
    assert results["other_get"]["code"] == "AccessDeniedException"      # idgate's refusal, before moto
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


async def test_dynamodbs_own_errors_pass_through_and_are_recorded(gateway_stack: GatewayStack) -> None:
    token = gateway_stack.token_file("acme", "svc-etl-acme", tenant="acme")
    (result,) = await gateway_stack.run_worker(token, "acme", "conditional_put_fails")
    assert (result["code"], result["status"]) == ("ConditionalCheckFailedException", 400)
    outcomes = [r for r in await gateway_stack.records() if r["event"] == "outcome"]
    assert [o["dynamodb"].get("error") for o in outcomes] == [None, "ConditionalCheckFailedException"]
    registry = gateway_stack.idgate.services.metrics.registry
    calls = [registry.get_sample_value("idgate_gateway_calls_total", {"operation": "PutItem", "outcome": outcome})
             for outcome in ("allow", "error")]
    assert calls == [1.0, 1.0]
    assert registry.get_sample_value("idgate_dynamodb_seconds_count", {"operation": "PutItem"}) == 2.0


async def test_redacted_keys_are_hmacs_the_same_on_every_call(make_gateway_stack: GatewayFactory,
                                                              moto: MotoServer) -> None:
    stack = await make_gateway_stack(gateway={"redact_keys": True})
    moto.create_role("tenant")
    create_tables(moto)
    token = stack.token_file("acme", "svc-etl-acme", tenant="acme")
    results = by_step(await stack.run_worker(token, "acme", "client_crud", "other_get"))
    assert results["client_crud"]["ok"] and not results["other_get"]["ok"]
    text = stack.idgate.services.config.audit.path.read_text()
    records = [r for r in await stack.records() if r["event"] == "decision"]
    keys = {k for r in records for t in r["dynamodb"]["touches"] for k in t["keys"]}
    assert len(keys) == 2 and all(k.startswith("hmac-sha256:") for k in keys)     # acme, and the other tenant
    assert '"acme"' not in text.replace('"tenant"', "")


async def test_a_rule_removed_after_the_vend_applies_to_the_next_call(gateway_stack: GatewayStack) -> None:
    """Every call is decided on the policy of the moment: credentials vended before a rule was removed are
    refused at once, not when they expire."""
    credentials = await gateway_stack.vend("svc-etl-acme", tenant="acme")
    body = json.dumps({"TableName": "orders", "Key": {"pk": {"S": "acme"}, "sk": {"S": "1"}}}).encode()
    assert (await gateway_stack.call(credentials, body))[0] == 200
    policies = gateway_stack.idgate.services.config.policies_dir
    (policies / "broker.yaml").write_text(GATEWAY_POLICY.replace("groups: [data-eng]", "groups: [nobody]")
                                          .replace("DEV_ISSUER", gateway_stack.dev.issuer.issuer_url))
    assert await gateway_stack.idgate.services.policy.reload()
    status, answer = await gateway_stack.call(credentials, body)
    assert (status, answer["__type"].rpartition("#")[2], answer["idgate_reason"]) == (
        400, "AccessDeniedException", "no_aws_rule")


async def test_a_large_answer_is_passed_back_and_recorded(gateway_stack: GatewayStack) -> None:
    token = gateway_stack.token_file("acme", "svc-etl-acme", tenant="acme")
    (result,) = await gateway_stack.run_worker(token, "acme", "big_page")
    assert result == {"step": "big_page", "ok": True, "data": 15}
    [query] = [r for r in await gateway_stack.records() if r["event"] == "outcome"
               and r["dynamodb"]["operation"] == "Query"]
    assert query["bytes_out"] > 300_000 and query["dynamodb"]["returned"]["count"] == 15
