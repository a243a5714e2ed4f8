"""`audit query`'s filters (proxy.audit.query): each filter on the records it reads, a decision and its
outcome judged as one request, capped and HMAC'd values found by the value an investigator types, time
bounds, and records of any shape read without raising."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from proxy.audit.query import Filters, key_forms, parse_when, partition_keys_of, rules_of, tables_of
from proxy.aws.gateway_records import KeyRedactor
from proxy.core import caps
from tests.factories import DEFAULT_ISSUER, gateway_decision, gateway_outcome, http_decision

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


# --- time -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "bound"), [
    ("2026-11-22", "2026-11-22T00:00:00.000000Z"),
    ("2026-11-22T23:59:59Z", "2026-11-22T23:59:59.000000Z"),
    ("2026-11-22T10:00:00+02:00", "2026-11-22T08:00:00.000000Z"),      # an offset is honoured
    ("2026-11-22T10:00:00", "2026-11-22T10:00:00.000000Z"),            # no offset: UTC
    ("2026-11-22 10:00:00.5", "2026-11-22T10:00:00.500000Z"),
    ("24h", "2026-11-22T12:00:00.000000Z"),
    ("7d", "2026-11-16T12:00:00.000000Z"),
    ("90m", "2026-11-23T10:30:00.000000Z"),
    ("2w", "2026-11-09T12:00:00.000000Z"),
])
def test_when_is_a_date_a_timestamp_or_a_duration_ago(given: str, bound: str) -> None:
    assert parse_when(given, NOW) == bound


@pytest.mark.parametrize("given", ["yesterday", "24", "-1d", "1y", "2026-13-01", "", "24 h"])
def test_a_time_that_is_none_of_those_is_refused_by_name(given: str) -> None:
    with pytest.raises(ValueError, match="not an ISO 8601 date or timestamp, nor a duration such as 24h or 7d"):
        parse_when(given, NOW)


def test_since_is_inclusive_and_until_exclusive() -> None:
    day = Filters(since=parse_when("2026-11-22", NOW), until=parse_when("2026-11-23", NOW))
    assert day.matches(gateway_decision(ts="2026-11-22T00:00:00.000000Z"))
    assert day.matches(gateway_decision(ts="2026-11-22T23:59:59.999999Z"))
    assert not day.matches(gateway_decision(ts="2026-11-23T00:00:00.000000Z"))
    assert not day.matches(gateway_decision(ts="2026-11-21T23:59:59.999999Z"))


@pytest.mark.parametrize("ts", [None, 17, "2026-11-22", "2026-11-22T10:00:00Z", "9999-99-99T99:99:99.999999Z "])
def test_a_record_without_a_well_formed_time_is_outside_every_time_range(ts: Any) -> None:
    assert not Filters(since="2000-01-01T00:00:00.000000Z").matches(gateway_decision(ts=ts))
    assert Filters().matches(gateway_decision(ts=ts))


# --- identity, decision, rule, surface, request id ------------------------------------------------------

def test_identity_by_exact_issuer_and_subject_glob() -> None:
    record = gateway_decision(sub="svc-etl-acme")
    assert Filters(subject="svc-etl-*").matches(record)
    assert Filters(subject="svc-etl-acme", issuer=DEFAULT_ISSUER).matches(record)
    assert not Filters(subject="SVC-etl-*").matches(record)                 # case-sensitive
    assert not Filters(subject="svc-etl").matches(record)
    assert not Filters(issuer=DEFAULT_ISSUER + "/").matches(record)
    assert not Filters(subject="*").matches({**record, "identity": None})   # a refusal before authentication


def test_a_capped_identity_value_is_found_by_its_full_text() -> None:
    long_subject = "svc-" + "x" * 400
    record = gateway_decision(sub=caps.capped(long_subject, caps.CLAIM))    # type: ignore[arg-type]
    assert Filters(subject=long_subject).matches(record)
    assert not Filters(subject="svc-" + "x" * 399).matches(record)


def test_decision_rule_surface_and_request_id() -> None:
    denied = gateway_decision("r9", decision="deny", rule=None)
    assert Filters(decision="deny").matches(denied) and not Filters(decision="allow").matches(denied)
    assert Filters(rule="tenant-orders").matches(gateway_decision())
    assert not Filters(rule="tenant").matches(gateway_decision())
    assert Filters(surface="dynamodb").matches(denied) and not Filters(surface="proxy").matches(denied)
    assert Filters(request_id="r9").matches(denied) and not Filters(request_id="r1").matches(denied)


def test_a_rule_is_found_in_touches_and_in_a_vends_rules() -> None:
    record = gateway_decision(rule="first")
    record["dynamodb"]["touches"].append({"table": "orders", "keys": ["acme"], "rule": "second"})
    assert Filters(rule="second").matches(record)
    vend = {"event": "decision", "surface": "credentials", "rule": "a", "aws": {"rules": ["a", "b"]}}
    assert Filters(rule="b").matches(vend)


# --- tables and keys ------------------------------------------------------------------------------------------

def test_a_table_is_found_where_a_record_names_it() -> None:
    assert tables_of(gateway_decision(table="orders")) == ["orders"]
    assert tables_of(gateway_outcome(table="orders")) == ["orders"]
    vend = {"event": "decision", "surface": "credentials", "aws": {"tables": ["reports", "orders"]}}
    assert Filters(table="reports").matches(vend)
    capacity = {"event": "outcome", "dynamodb": {"consumed_capacity": [{"table": "invoices", "units": 1}]}}
    assert tables_of(capacity) == ["invoices"]
    assert Filters(table="arn:aws:dynamodb:us-east-1:123456789012:table/orders").matches(gateway_decision())
    assert not Filters(table="order").matches(gateway_decision())


def test_a_partition_key_is_found_in_touches_the_denied_touch_and_items() -> None:
    assert Filters(keys=key_forms("acme", None)).matches(gateway_decision(keys=("acme",)))
    assert not Filters(keys=key_forms("acme", None)).matches(gateway_decision(keys=("globex",)))
    assert Filters(keys=key_forms("acme", None)).matches(gateway_outcome(items=(("acme", "7"),)))
    assert not Filters(keys=key_forms("7", None)).matches(gateway_outcome(items=(("acme", "7"),)))  # a sort key
    denied = gateway_decision(keys=("globex",), decision="deny")
    denied["dynamodb"]["touches"] = {"capped": True, "count": 500, "first": denied["dynamodb"]["touches"]}
    denied["dynamodb"]["denied"] = {"table": "orders", "keys": ["acme"], "rule": None}
    assert Filters(keys=key_forms("acme", None)).matches(denied)
    assert partition_keys_of(denied) == ["globex", "acme"]


def test_a_redacted_key_is_found_by_its_plain_value_with_the_redaction_key() -> None:
    secret = b"r" * 32
    hmac_form = KeyRedactor(secret)("acme")
    record = gateway_decision(keys=(hmac_form,))
    assert Filters(keys=key_forms("acme", secret)).matches(record)
    assert not Filters(keys=key_forms("acme", None)).matches(record)
    assert not Filters(keys=key_forms("acme", b"s" * 32)).matches(record)   # another ring's key


def test_a_long_key_is_found_through_its_capped_form() -> None:
    long_key = "k" * 1000
    record = gateway_decision(keys=(KeyRedactor(None)(long_key),))
    assert isinstance(record["dynamodb"]["touches"][0]["keys"][0], dict)
    assert Filters(keys=key_forms(long_key, None)).matches(record)
    assert not Filters(keys=key_forms(long_key + "k", None)).matches(record)


# --- a request: a decision and its outcome ----------------------------------------------------------------------

def test_an_outcome_is_judged_with_the_identity_decision_and_target_of_its_decision() -> None:
    decision, outcome = gateway_decision(sub="svc-etl-acme"), gateway_outcome()
    assert not Filters(subject="svc-etl-acme").matches(outcome)
    assert Filters(subject="svc-etl-acme", decision="allow").matches(outcome, decision)
    assert not Filters(subject="svc-etl-globex").matches(outcome, decision)


def test_filters_may_be_met_by_either_record_of_a_request() -> None:
    """A Scan names no key; what it returned does.  The subject is on the decision only."""
    scan = gateway_decision("s1", sub="svc-ops-1", keys=(), operation="Scan", rule="ops-scan")
    returned = gateway_outcome("s1", items=(("acme", "1"), ("globex", "1")), operation="Scan", rule="ops-scan",
                               ts="2026-11-23T00:00:00.100000Z")
    question = Filters(subject="svc-ops-*", keys=key_forms("acme", None), since="2026-11-23T00:00:00.000000Z")
    assert not question.matches(scan)
    assert question.matches(returned, scan)


def test_route_is_judged_on_the_decisions_host_and_path() -> None:
    def orders(host: str, path: str) -> bool:
        return host == "orders.internal" and path.startswith("/v1/")

    assert Filters(route=orders).matches(http_decision(path="/v1/orders/7"))
    assert not Filters(route=orders).matches(http_decision(path="/admin"))
    outcome = {"event": "outcome", "request_id": "h1", "surface": "proxy", "status": 200}
    assert Filters(route=orders).matches(outcome, http_decision())
    refused = http_decision(decision="deny", target={"method": "GET", "host": "orders.internal", "raw_path": "/v1/%2e"})
    assert Filters(route=orders).matches(refused)
    assert not Filters(route=orders).matches(gateway_decision())             # the gateway is no route


def test_event_says_which_records_of_a_matching_request_are_shown() -> None:
    assert Filters(event="outcome").shows("outcome") and not Filters(event="outcome").shows("decision")
    assert Filters().shows("retention")


# --- records of any shape ---------------------------------------------------------------------------------------

ODD_VALUES: list[Any] = [None, 1, True, "x", [], {}, [1, None], {"capped": True}, {"first": 3}, {"capped": True, "first": [1]}]


@pytest.mark.parametrize("odd", ODD_VALUES)
def test_a_forged_record_of_any_shape_never_raises(odd: Any) -> None:
    every = Filters(issuer="i", subject="s*", rule="r", decision="allow", surface="dynamodb", route=lambda h, p: True,
                    table="t", keys=frozenset({"k"}), since="2000-01-01T00:00:00.000000Z", request_id="r")
    shapes = [{"identity": odd}, {"target": odd}, {"dynamodb": odd}, {"aws": odd}, {"ts": odd}, {"rule": odd},
              {"dynamodb": {"touches": odd, "tables": odd, "denied": odd, "returned": odd, "consumed_capacity": odd}},
              {"dynamodb": {"returned": {"keys": odd}, "touches": [{"keys": odd, "table": odd}]}},
              {"dynamodb": {"returned": {"keys": [odd]}}}, {"aws": {"rules": odd, "tables": odd}},
              {"identity": {"iss": odd, "sub": odd}, "target": {"host": odd, "path": odd}}]
    for shape in shapes:
        record = {"event": "decision", "surface": "dynamodb", "request_id": "r", **shape}
        assert every.matches(record, record) in (True, False)
        assert isinstance(tables_of(record), list) and isinstance(rules_of(record), list)
