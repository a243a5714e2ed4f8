"""The query's scan (proxy.audit.search): a malformed, edited or hostile line is reported at its `where`
and never shown, a record shipped twice is shown once, a different line under a seq already read is a
conflict, and an outcome is judged with its decision (the decision then shown right before it)."""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

from proxy.audit.chain import ChainState, parse_line
from proxy.audit.query import Filters, key_forms
from proxy.audit.search import Search, _Ranges
from proxy.audit.sources import Chain, Segment, SourceLine
from proxy.aws.gateway_records import KeyRedactor
from tests.factories import gateway_decision, gateway_outcome, http_decision
from tests.harness.segments import sealed_lines

ACME = key_forms("acme", None)


def chain(lines: list[bytes | SourceLine], name: str = "idgate-audit") -> Chain:
    framed = [line if isinstance(line, SourceLine) else SourceLine(f"{name}.jsonl:{i}", line)
              for i, line in enumerate(lines, 1)]
    return Chain(name, f"{name}.jsonl", (Segment(f"{name}.jsonl", None, None, lambda: iter(framed)),))


def search(*chains: Chain, filters: Filters = Filters(), **options: Any) -> tuple[list[dict[str, Any]], Search, list[str]]:
    reports: list[str] = []
    scan = Search(filters, reports.append, **options)
    found = list(scan.run(chains))
    return [{"where": f.where, **f.record, "paired": f.decision is not None} for f in found], scan, reports


def resealed(line: bytes, edit: bytes) -> bytes:
    """`line` with `edit` put after its opening brace, and its hash made right again: a forger's line."""
    record, _ = parse_line(line)
    body = b"{" + edit + line[1:-len(',"hash":"') - 66] + b"}"
    digest = hashlib.sha256(record["prev"].encode() + body).hexdigest().encode()
    return body[:-1] + b',"hash":"' + digest + b'"}'


def test_every_record_in_chain_order_without_filters() -> None:
    lines = sealed_lines([gateway_decision("r1"), gateway_outcome("r1"), http_decision("h1")])
    shown, scan, reports = search(chain(lines))
    assert [r["seq"] for r in shown] == [1, 2, 3] and reports == []
    assert (scan.tally.records, scan.tally.shown, scan.tally.chains) == (3, 3, 1)


def test_each_bad_line_is_reported_at_its_where_counted_and_not_shown() -> None:
    good = sealed_lines([http_decision(f"h{i}") for i in range(6)])
    edited = good[1].replace(b'"allow"', b'"deny"')
    lines: list[bytes | SourceLine] = [
        good[0],
        edited,                                                      # 2: the hash no longer matches
        b'{"not": "json"',                                           # 3
        resealed(good[2], b"\r"),                                    # 4: hash right, a raw carriage return
        resealed(good[3], b"\t"),                                   # 5: well-formed JSON idgate never writes
        SourceLine("idgate-audit.jsonl:6", None, "line longer than 1048576 bytes (not an idgate record)"),
        b'"\x1b]0;title\x07"',                                       # 7: a terminal escape
        SourceLine("idgate-audit.jsonl:8", good[5], "unterminated last line (file truncated mid-record)"),
    ]
    shown, scan, reports = search(chain(lines))
    assert [r["where"] for r in shown] == ["idgate-audit.jsonl:1", "idgate-audit.jsonl:8"]
    assert [r.split(":")[1] for r in reports] == ["2", "3", "4", "5", "6", "7", "8"]
    assert "hash mismatch: record seq 2 was edited" in reports[0]
    assert all("bytes outside printable ASCII" in reports[i] for i in (2, 3, 5))
    assert "unterminated last line" in reports[6]
    assert (scan.tally.malformed, scan.tally.edited, scan.tally.shown) == (5, 1, 2)


def test_a_record_shipped_twice_is_shown_once() -> None:
    lines = sealed_lines([gateway_decision(f"r{i}") for i in range(5)])
    replayed = lines[:4] + lines[2:]                       # sent again after a crash: 3 and 4 twice
    shown, scan, reports = search(chain(replayed), chain(lines))     # and the same chain from a second source
    assert [r["seq"] for r in shown] == [1, 2, 3, 4, 5] and reports == []
    assert scan.tally.duplicates == 2 + 5


def test_another_line_under_a_seq_already_read_is_a_conflict() -> None:
    first = sealed_lines([gateway_decision("r1"), gateway_decision("r2", keys=("acme",))])
    record = parse_line(first[0])[0]
    forged = sealed_lines([gateway_decision("r2", keys=("globex",))], state=ChainState(1, record["hash"]))
    shown, scan, reports = search(chain(first + forged))
    # Which of the two is the chain's, only the chain tells (verify --anchors): neither is hidden.
    assert [r["seq"] for r in shown] == [1, 2, 2]
    assert [r["dynamodb"]["touches"][0]["keys"] for r in shown[1:]] == [["acme"], ["globex"]]
    assert reports == ["idgate-audit.jsonl:3: conflict: another record with instance idgate-audit seq 2 "
                       "was read before: both are shown, and one of them is not the chain's (run idgate audit "
                       "verify --anchors on this source)"]
    assert scan.tally.conflicts == 1


def test_a_seq_met_again_beyond_the_window_is_counted_not_shown() -> None:
    lines = sealed_lines([gateway_decision(f"r{i}", keys=(f"k{i}",)) for i in range(4)])
    shown, scan, _ = search(chain(lines + lines[:1]), filters=Filters(keys=key_forms("k3", None)), window=2)
    assert [r["seq"] for r in shown] == [4]
    assert scan.tally.uncompared == 1


def test_instances_are_told_apart_by_the_record_then_by_the_chain() -> None:
    lines = sealed_lines([http_decision("h1")])
    shown, _, _ = search(chain(lines, "a"), chain(lines, "b"))
    assert len(shown) == 2                                 # two writers may both have a seq 1
    named = sealed_lines([{**http_decision("h1"), "instance": "host-1"}])
    shown, scan, _ = search(chain(named, "a"), chain(named, "b"))
    assert len(shown) == 1 and scan.tally.duplicates == 1


# --- a decision and its outcome ------------------------------------------------------------------------------

def scan_and_others() -> list[bytes]:
    return sealed_lines([
        gateway_decision("s1", sub="svc-ops-1", keys=(), operation="Scan", rule="ops-scan"),
        gateway_decision("r2", keys=("globex",), sub="svc-etl-globex"),
        gateway_outcome("r2", items=(("globex", "1"),)),
        gateway_outcome("s1", items=(("acme", "1"), ("globex", "1")), operation="Scan", rule="ops-scan"),
    ])


def test_a_decision_found_by_its_outcome_is_shown_right_before_it() -> None:
    shown, _, _ = search(chain(scan_and_others()), filters=Filters(keys=ACME))
    assert [(r["seq"], r["event"], r["paired"]) for r in shown] == [(1, "decision", False), (4, "outcome", True)]
    assert shown[0]["where"] == "idgate-audit.jsonl:1"


def test_event_picks_the_records_of_a_matching_request() -> None:
    outcomes, _, _ = search(chain(scan_and_others()), filters=Filters(subject="svc-ops-*", event="outcome"))
    assert [(r["seq"], r["paired"]) for r in outcomes] == [(4, True)]
    decisions, _, _ = search(chain(scan_and_others()), filters=Filters(keys=ACME, event="decision"))
    assert [r["seq"] for r in decisions] == [1]


def test_an_outcome_whose_decision_left_the_window_is_judged_alone() -> None:
    lines = scan_and_others()
    shown, _, _ = search(chain(lines), filters=Filters(subject="svc-ops-*"), held_bytes=len(lines[0]) + 300)
    assert [r["seq"] for r in shown] == [1]                # r2's decision pushed s1's out before its outcome


def test_an_outcome_pairs_only_with_a_decision_of_its_surface() -> None:
    lines = sealed_lines([http_decision("x1", sub="svc-web-1"), gateway_outcome("x1")])
    shown, _, _ = search(chain(lines), filters=Filters(subject="svc-web-1"))
    assert [r["seq"] for r in shown] == [1]


def test_a_decision_pairs_with_one_outcome_and_only_where_outcomes_are_written() -> None:
    """Held decisions are the calls in flight: one outcome ends one, and a vend (no outcome) is never held."""
    lines = sealed_lines([gateway_decision("r1", sub="svc-a"), gateway_outcome("r1"), gateway_outcome("r1"),
                          {**http_decision("c1", sub="svc-a"), "surface": "credentials"},
                          {**gateway_outcome("c1"), "surface": "credentials"}])
    shown, scan, _ = search(chain(lines), filters=Filters(subject="svc-a"))
    assert [r["seq"] for r in shown] == [1, 2, 4]
    assert len(scan._held) == 0


def test_keys_redacted_beyond_the_investigators_reach_are_counted() -> None:
    lines = sealed_lines([gateway_decision("r1", keys=(KeyRedactor(b"r" * 32)("acme"),))])
    shown, scan, _ = search(chain(lines), filters=Filters(keys=ACME))
    assert shown == [] and scan.tally.redacted == 1
    shown, scan, _ = search(chain(lines), filters=Filters(keys=key_forms("acme", b"r" * 32)))
    assert len(shown) == 1 and scan.tally.redacted == 0


def test_ranges_hold_exactly_the_numbers_added() -> None:
    rng = random.Random(7)
    for _ in range(200):
        ranges, added = _Ranges(), set()
        for n in (rng.randrange(40) for _ in range(rng.randrange(1, 60))):
            assert ranges.add(n) is (n not in added)
            added.add(n)
        starts, ends = ranges._starts, ranges._ends
        assert {n for s, e in zip(starts, ends, strict=True) for n in range(s, e + 1)} == added
        assert all(ends[i] + 1 < starts[i + 1] for i in range(len(starts) - 1))     # disjoint, not adjacent


def test_a_report_never_carries_a_raw_line() -> None:
    _, _, reports = search(chain([b'{"v": 1, "seq": "\x1b[31m"}']))
    assert len(reports) == 1 and re.fullmatch(r"[ -~]*", reports[0])
