"""Policy → IAM session policy: ARNs, actions, leading keys from verified claims, attributes, role choice,
and the load-time checks (size for any caller, durations, keyless actions) that check-config reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.config import MAX_AWS_REGION_CHARS
from proxy.core.errors import AccessDenied, ConfigError
from proxy.policy.engine import CompiledPolicy
from proxy.policy.rules import AwsGrant, DynamoDbGrant, Rule, Who
from proxy.policy.session_policy import (
    MAX_SESSION_POLICY_CHARS,
    MAX_TEMPLATE_VALUE_CHARS,
    choose_role,
    render_session_policy,
    role_choices,
    rule_problems,
)
from proxy.policy.store import compile_directory
from tests.harness.paths import POLICIES

ROLE = "arn:aws:iam::123456789012:role/etl"


def rule(rule_id: str = "r1", *grants: DynamoDbGrant, role_arn: str = ROLE, **aws: object) -> Rule:
    grants = grants or (DynamoDbGrant(table="orders", actions=("GetItem", "Query")),)
    return Rule(id=rule_id, who=Who(any=True), aws=AwsGrant(role_arn=role_arn, dynamodb=grants, **aws),  # type: ignore[arg-type]
                file="p.yaml", line=3)


def render(*rules: Rule, claims: dict[str, object] | None = None, region: str = "eu-west-1") -> dict[str, object]:
    policy = render_session_policy(choose_role(rules, None), claims or {}, region)
    document: dict[str, object] = json.loads(policy.document)
    return document


def test_table_and_index_arns_come_from_the_role_account_and_the_configured_region() -> None:
    grant = DynamoDbGrant(table="orders", actions=("Query",), indexes=("by-status",))
    statement = render(rule("r", grant, role_arn="arn:aws-cn:iam::210987654321:role/team/etl"))["Statement"][0]
    assert statement["Resource"] == [
        "arn:aws-cn:dynamodb:eu-west-1:210987654321:table/orders",
        "arn:aws-cn:dynamodb:eu-west-1:210987654321:table/orders/index/by-status",
    ]


def test_only_the_listed_actions_and_no_conditions_without_keys_or_attributes() -> None:
    document = render(rule())
    assert document["Version"] == "2012-10-17"
    assert document["Statement"] == [{
        "Effect": "Allow", "Action": ["dynamodb:GetItem", "dynamodb:Query"],
        "Resource": ["arn:aws:dynamodb:eu-west-1:123456789012:table/orders"],
    }]


def test_leading_keys_are_filled_from_verified_claims_and_must_be_present() -> None:
    grant = DynamoDbGrant(table="orders", actions=("GetItem",), leading_keys=("${claims.tenant}", "shared"))
    statement = render(rule("r", grant), claims={"tenant": "acme"})["Statement"][0]
    assert statement["Condition"] == {
        "ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["acme", "shared"]},
        # ForAllValues alone is true for a request without keys: the Null check closes that.
        "Null": {"dynamodb:LeadingKeys": "false"},
    }


def test_attributes_come_with_specific_attributes_select_and_return_values() -> None:
    grant = DynamoDbGrant(table="orders", actions=("GetItem",), attributes=("pk", "sk", "status"))
    condition = render(rule("r", grant))["Statement"][0]["Condition"]
    assert condition == {
        "ForAllValues:StringEquals": {"dynamodb:Attributes": ["pk", "sk", "status"]},
        "StringEqualsIfExists": {"dynamodb:Select": "SPECIFIC_ATTRIBUTES",
                                 "dynamodb:ReturnValues": ["NONE", "UPDATED_OLD", "UPDATED_NEW"]},
    }


@pytest.mark.parametrize(("claims", "reason"), [
    ({}, "claim_missing"),
    ({"tenant": 7}, "claim_not_string"),
    ({"tenant": ["acme"]}, "claim_not_string"),
    ({"tenant": None}, "claim_not_string"),
    ({"tenant": ""}, "claim_empty"),
    ({"tenant": "*"}, "claim_unsafe"),
    ({"tenant": "ac?me"}, "claim_unsafe"),
    ({"tenant": "${aws:username}"}, "claim_unsafe"),
    ({"tenant": "acme\nx"}, "claim_unsafe"),
    ({"tenant": "租户"}, "claim_unsafe"),
    ({"tenant": "x" * (MAX_TEMPLATE_VALUE_CHARS + 1)}, "claim_too_long"),
    ({"tenant": '"' * (MAX_TEMPLATE_VALUE_CHARS // 2 + 1)}, "claim_too_long"),   # counted JSON-encoded
])
def test_a_claim_that_cannot_be_a_literal_key_denies(claims: dict[str, object], reason: str) -> None:
    grant = DynamoDbGrant(table="orders", actions=("GetItem",), leading_keys=("${claims.tenant}",))
    with pytest.raises(AccessDenied) as caught:
        render(rule("r", grant), claims=claims)
    assert caught.value.reason == reason
    assert "acme" not in caught.value.message and "*" not in caught.value.message


def test_claim_values_are_data_a_quote_cannot_add_keys_or_statements() -> None:
    hostile = 'acme"],"dynamodb:LeadingKeys":["other'
    grant = DynamoDbGrant(table="orders", actions=("GetItem",), leading_keys=("${claims.tenant}",))
    document = render(rule("r", grant), claims={"tenant": hostile})
    assert len(document["Statement"]) == 1
    assert document["Statement"][0]["Condition"]["ForAllValues:StringEquals"] == {"dynamodb:LeadingKeys": [hostile]}


def test_rules_naming_one_role_add_up_and_take_the_shortest_duration() -> None:
    a = rule("a", DynamoDbGrant(table="orders", actions=("GetItem",)), duration=7200)
    b = rule("b", DynamoDbGrant(table="invoices", actions=("Query",)), duration=3600)
    choice = choose_role([a, b], None)
    assert (choice.name, choice.rule_ids, choice.duration) == ("etl", ("a", "b"), 3600)
    assert [s["Resource"][0].rsplit("/", 1)[1] for s in render(a, b)["Statement"]] == ["orders", "invoices"]


def test_role_choice_by_name_or_arn_and_denials() -> None:
    etl, report = rule("etl"), rule("rep", role_arn="arn:aws:iam::123456789012:role/reports/reporting")
    assert choose_role([etl, report], "reporting").rule_ids == ("rep",)
    assert choose_role([etl, report], ROLE).rule_ids == ("etl",)
    for rules, requested, reason in (([], None, "no_aws_rule"), ([etl, report], None, "role_required"),
                                     ([etl], "reporting", "role_not_granted"), ([etl], "etl2", "role_not_granted")):
        with pytest.raises(AccessDenied) as caught:
            choose_role(rules, requested)
        assert caught.value.reason == reason


def test_same_role_name_in_two_accounts_needs_the_arn() -> None:
    a, b = rule("a"), rule("b", role_arn="arn:aws:iam::999999999999:role/etl")
    assert len(role_choices([a, b])) == 2
    with pytest.raises(AccessDenied) as caught:
        choose_role([a, b], "etl")
    assert caught.value.reason == "ambiguous_role"
    assert choose_role([a, b], "arn:aws:iam::999999999999:role/etl").rule_ids == ("b",)


def test_the_rendered_policy_is_compact_and_hashed_as_sent() -> None:
    policy = render_session_policy(choose_role([rule()], None), {}, "us-east-1")
    assert " " not in policy.document
    import hashlib
    assert policy.sha256 == hashlib.sha256(policy.document.encode()).hexdigest()


# -- load time ---------------------------------------------------------------------------------------

def big_rule(tables: int) -> Rule:
    grants = tuple(DynamoDbGrant(table=f"table-{i:03d}", actions=("GetItem", "Query", "PutItem"),
                                 leading_keys=("${claims.tenant}",), attributes=("pk", "sk"))
                   for i in range(tables))
    return rule("big", *grants)


def test_a_rule_that_fits_for_every_caller_has_no_problems() -> None:
    assert rule_problems(big_rule(2)) == []


def test_load_time_size_check_uses_worst_case_claims_and_region() -> None:
    problems = rule_problems(big_rule(4))
    assert len(problems) == 1 and str(MAX_SESSION_POLICY_CHARS) in problems[0]
    # Whatever fits at load time fits at request time: the worst case bounds every real caller.
    fitting = big_rule(3)
    assert rule_problems(fitting) == []
    policy = render_session_policy(choose_role([fitting], None),
                                   {"tenant": "t" * MAX_TEMPLATE_VALUE_CHARS}, "r" * MAX_AWS_REGION_CHARS)
    assert len(policy.document) <= MAX_SESSION_POLICY_CHARS


def test_short_durations_and_keyless_actions_with_leading_keys_are_problems() -> None:
    grant = DynamoDbGrant(table="orders", actions=("Query", "Scan"), leading_keys=("${claims.tenant}",))
    problems = rule_problems(rule("r", grant, duration=900))
    assert any("at least 2700" in p for p in problems)
    assert any("Scan never carry a partition key" in p for p in problems)


def test_check_config_path_reports_aws_problems_with_file_line_and_rule(tmp_path: Path) -> None:
    (tmp_path / "aws.yaml").write_text(
        "rules:\n"
        "  - id: ok\n"
        "    who: {subject: svc-a}\n"
        "    aws: {role_arn: 'arn:aws:iam::123456789012:role/etl', dynamodb: [{table: orders, actions: [GetItem]}]}\n"
        "  - id: too-short\n"
        "    who: {subject: svc-b}\n"
        "    aws:\n"
        "      role_arn: arn:aws:iam::123456789012:role/etl\n"
        "      web_identity: true\n"
        "      duration: 1000\n"
        "      dynamodb: [{table: orders, actions: [GetItem]}]\n")
    with pytest.raises(ConfigError) as caught:
        compile_directory(tmp_path)
    rendered = [str(p) for p in caught.value.problems]
    assert any(p.startswith(f"{tmp_path / 'aws.yaml'}:5: [rule too-short]") and "2700" in p for p in rendered)
    assert any("[rule too-short]" in p and "web_identity differs from rule ok" in p for p in rendered)


def test_shipped_example_policies_compile() -> None:
    policy = CompiledPolicy.compile(compile_directory(POLICIES).rules)
    assert policy.rule("etl-orders-table") is not None
