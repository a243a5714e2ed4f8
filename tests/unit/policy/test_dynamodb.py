"""Touches against grants, as IAM fine-grained access control judges them (proxy.policy.dynamodb)."""

from __future__ import annotations

import pytest

from proxy.core.errors import AccessDenied
from proxy.core.model import Touch
from proxy.core.reasons import Reason
from proxy.policy.dynamodb import TableGrant, authorize, table_grants
from proxy.policy.rules import AwsGrant, DynamoDbGrant, Rule, Who
from proxy.policy.session_policy import role_choices

ORDERS = TableGrant("tenant", "orders", frozenset({"GetItem", "Query", "PutItem", "UpdateItem"}),
                    frozenset({"by-sk"}), frozenset({"acme"}), None)
COLUMNS = TableGrant("columns", "invoices", frozenset({"GetItem", "UpdateItem", "PutItem", "Query"}),
                     frozenset(), None, frozenset({"pk", "sk", "total"}))
OPEN = TableGrant("open", "reports", frozenset({"Scan", "Query"}), frozenset({"by-day"}), None, None)
GRANTS = (ORDERS, COLUMNS, OPEN)


def touch(table: str = "orders", action: str = "GetItem", keys: tuple[str, ...] = ("acme",),
          attributes: frozenset[str] | None = None, **kw: object) -> Touch:
    return Touch(table, kw.pop("index", None), action, keys, attributes, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("touches, reason", [
    ([touch()], Reason.MATCHED),
    ([touch(action="DeleteItem")], Reason.ACTION_NOT_GRANTED),
    ([touch(table="secrets")], Reason.ACTION_NOT_GRANTED),
    ([touch(keys=("globex",))], Reason.LEADING_KEY_NOT_GRANTED),
    ([touch(keys=("acme", "globex"))], Reason.LEADING_KEY_NOT_GRANTED),       # every key, not any
    ([touch(keys=())], Reason.LEADING_KEY_NOT_GRANTED),                       # no key at all: a scan
    ([touch(action="Query", index="by-sk")], Reason.MATCHED),
    ([touch(action="Query", index="by-status")], Reason.INDEX_NOT_GRANTED),
    ([touch(action="Query", index="by-sk", mapped=False)], Reason.UNMAPPED_INDEX),
    ([touch(table="invoices", keys=("x",), attributes=frozenset({"pk", "total"}))], Reason.MATCHED),
    ([touch(table="invoices", keys=("x",))], Reason.ALL_ATTRIBUTES),
    ([touch(table="invoices", keys=("x",), attributes=frozenset({"pk", "secret"}))], Reason.ATTRIBUTE_NOT_GRANTED),
    ([touch(table="invoices", action="PutItem", keys=("x",), attributes=frozenset({"pk"}), whole_item=True)],
     Reason.WHOLE_ITEM_WRITE),
    ([touch(table="reports", action="Scan", keys=())], Reason.MATCHED),
    ([touch(table="reports", action="Query", index="by-day", mapped=False)], Reason.MATCHED),  # no leading keys
])
def test_one_touch(touches: list[Touch], reason: Reason) -> None:
    verdict = authorize(touches, GRANTS)
    assert verdict.reason is reason
    assert verdict.allowed is (reason is Reason.MATCHED)


def test_a_call_is_denied_whole_when_one_touch_is_forbidden() -> None:
    verdict = authorize([touch(), touch(action="PutItem"), touch(keys=("globex",)), touch()], GRANTS)
    assert not verdict.allowed
    assert verdict.denied == 2
    assert verdict.rules == ("tenant", "tenant", None, None)


def test_each_touch_names_the_rule_that_allows_it() -> None:
    verdict = authorize([touch(), touch(table="reports", action="Scan", keys=())], GRANTS)
    assert verdict.allowed and verdict.rules == ("tenant", "open")


def test_a_touch_must_fit_one_grant_whole() -> None:
    """Two grants on one table do not add up within one touch: IAM judges each statement alone."""
    keys = TableGrant("a", "t", frozenset({"GetItem"}), frozenset(), frozenset({"acme"}), frozenset({"pk"}))
    columns = TableGrant("b", "t", frozenset({"GetItem"}), frozenset(), frozenset({"globex"}), frozenset({"pk", "x"}))
    verdict = authorize([touch(table="t", attributes=frozenset({"pk", "x"}))], (keys, columns))
    # Denied; the reason is the check of the grant that came closest (a: right key, one attribute too many).
    assert not verdict.allowed and verdict.reason is Reason.ATTRIBUTE_NOT_GRANTED


def test_grants_fill_templates_from_the_callers_claims() -> None:
    rule = Rule("r", Who(any=True), aws=AwsGrant("arn:aws:iam::123456789012:role/t", dynamodb=(
        DynamoDbGrant("orders", ("GetItem",), leading_keys=("${claims.tenant}", "shared")),), gateway=True))
    choice = role_choices([rule])[0]
    assert choice.gateway and choice.dynamodb_rules == ("r",)
    grants = table_grants(choice, {"tenant": "acme"})
    assert grants[0].leading_keys == frozenset({"acme", "shared"})
    with pytest.raises(AccessDenied) as denied:
        table_grants(choice, {"tenant": "ac*"})      # a wildcard claim never widens a key list
    assert denied.value.reason is Reason.CLAIM_UNSAFE
