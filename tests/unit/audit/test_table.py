"""`audit query`'s table (proxy.audit.table): what each column shows, and that a record an attacker wrote
can neither act on the terminal nor pass for other columns or characters."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from proxy.audit.search import Found
from proxy.audit.table import COLUMNS, MAX_CELL, TableWriter, cells, escape
from proxy.aws.gateway_records import KeyRedactor
from proxy.core import caps
from tests.factories import DEFAULT_ISSUER, gateway_decision, gateway_outcome, http_decision

GAP = re.compile(r" {2,}")


def found(record: dict[str, Any], decision: dict[str, Any] | None = None) -> Found:
    return Found("a.jsonl:1", "idgate-audit", {"seq": 7, **record}, b"{}", decision)


def row(record: dict[str, Any], decision: dict[str, Any] | None = None, known: dict[str, str] | None = None) -> dict[str, str]:
    return dict(zip(COLUMNS, cells(found(record, decision), known or {}), strict=True))


def test_a_gateway_decision_and_its_outcome() -> None:
    decision = gateway_decision(sub="svc-etl-acme", keys=("acme",), operation="Query")
    assert row(decision) == {
        "time": "2026-11-22T10:00:00.000000Z", "instance": "idgate-audit", "seq": "7", "event": "decision",
        "result": "allow", "rule": "tenant-orders", "identity": f"svc-etl-acme ({DEFAULT_ISSUER})",
        "surface": "dynamodb", "target": "Query orders", "keys": "acme"}
    outcome = row(gateway_outcome(items=(("acme", "1"), ("acme", "2")), operation="Query"), decision)
    assert outcome["result"] == "200" and outcome["keys"] == "acme"
    assert outcome["identity"] == f"svc-etl-acme ({DEFAULT_ISSUER})"        # the decision's
    assert row(gateway_outcome())["identity"] == "-"                          # its decision not known


def test_denials_errors_http_targets_and_vends() -> None:
    assert row(gateway_decision(decision="deny", rule=None))["result"] == "deny:leading_key_not_granted"
    assert row(gateway_decision(decision="deny", rule=None))["rule"] == "-"
    assert row({**gateway_outcome(), "status": 502, "error": "upstream_failed"})["result"] == "502:upstream_failed"
    assert row(http_decision(path="/v1/orders/7"))["target"] == "GET orders.internal/v1/orders/7"
    vend = {"event": "decision", "surface": "credentials", "decision": "allow",
            "target": {"method": "GET", "host": "h", "path": "/c", "role": "etl"},
            "aws": {"role_arn": "arn:aws:iam::123456789012:role/etl", "tables": ["orders"]}}
    assert row(vend)["target"] == "role arn:aws:iam::123456789012:role/etl"


def test_keys_show_the_investigators_value_for_its_hmac_and_cut_other_hmacs() -> None:
    redact = KeyRedactor(b"r" * 32)
    record = gateway_decision(keys=(redact("acme"), redact("globex")))
    shown = row(record, known={redact("acme"): "acme"})["keys"]
    assert shown == "acme,hmac:" + redact("globex").removeprefix("hmac-sha256:")[:12]


def test_many_keys_are_counted_past_a_few() -> None:
    record = gateway_decision(keys=tuple(f"t{i}" for i in range(10)))
    assert row(record)["keys"] == "t0,t1,t2,t3,+6"


def test_a_capped_value_shows_its_prefix() -> None:
    record = gateway_decision(sub=caps.capped("svc-" + "x" * 400, caps.CLAIM))      # type: ignore[arg-type]
    assert row(record)["identity"].startswith("svc-xxx") and "..." in row(record)["identity"]


def test_a_long_cell_is_cut() -> None:
    cell = row(http_decision(path="/" + "p" * 500))["target"]
    assert len(cell) == MAX_CELL and cell.endswith("...")


# --- hostile values ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "shown"), [
    ("svc-1", "svc-1"),
    ("a b", "a b"),
    ("\x1b[2J\x1b[31mred", "\\x1b[2J\\x1b[31mred"),          # clear screen, colour
    ("ok\rforged", "ok\\x0dforged"),                         # carriage return over the row
    ("two\nlines", "two\\x0alines"),
    ("\x9b31m", "\\x9b31m"),                                 # C1 CSI
    ("\u202eevil", "\\u202eevil"),                           # right-to-left override
    ("\u0430cme", "\\u0430cme"),                             # Cyrillic a: not acme
    ("zero\u200bwidth", "zero\\u200bwidth"),
    ("\U0001f600", "\\U0001f600"),
    ("back\\slash", "back\\\\slash"),                        # an escape cannot be forged
    ("a  b", "a\\x20\\x20b"),                                # no gap inside a cell
    (" lead", "\\x20lead"), ("trail ", "trail\\x20"),
    ("tab\there", "tab\\x09here"),
])
def test_escape_leaves_printable_ascii_only(text: str, shown: str) -> None:
    assert escape(text) == shown
    assert re.fullmatch(r"[ -~]*", escape(text)) and "  " not in escape(text)


def test_a_forged_subject_cannot_make_columns_or_an_issuer_of_its_own() -> None:
    forged = gateway_decision(sub="x  deny  forged-rule  (https://login)\x1b[0m")
    text = io.StringIO()
    writer = TableWriter(text, {})
    writer.add(found(forged))
    writer.add(found(gateway_decision(sub="svc-etl-acme")))
    writer.flush()
    header, first, second = text.getvalue().splitlines()
    for line in (first, second):
        assert len(GAP.split(line)) == len(COLUMNS)
    identity = GAP.split(first)[COLUMNS.index("identity")]
    assert identity.startswith("x\\x20\\x20deny\\x20\\x20forged-rule\\x20")
    assert identity.endswith(f" ({DEFAULT_ISSUER})") and identity.count("(") == 1


def test_a_long_subject_cannot_push_its_issuer_out_of_the_cell() -> None:
    cell = row(gateway_decision(sub="svc-" + "x" * 200))["identity"]
    assert cell.endswith(f"... ({DEFAULT_ISSUER})")


def test_a_key_with_a_comma_is_one_key() -> None:
    assert row(gateway_decision(keys=("acme,globex",)))["keys"] == "acme\\x2cglobex"


# --- the writer --------------------------------------------------------------------------------------------------

def test_columns_are_as_wide_as_the_first_block_needs() -> None:
    out = io.StringIO()
    writer = TableWriter(out, {}, block=2)
    for sub in ("a", "a-much-longer-subject", "b", "c"):
        writer.add(found(gateway_decision(sub=sub)))
    writer.flush()
    lines = out.getvalue().splitlines()
    assert lines[0].split() == list(COLUMNS)
    assert len({line.index("dynamodb") for line in lines[1:]}) == 1           # aligned
    assert len(lines) == 5


def test_no_row_no_header() -> None:
    out = io.StringIO()
    TableWriter(out, {}).flush()
    assert out.getvalue() == ""
