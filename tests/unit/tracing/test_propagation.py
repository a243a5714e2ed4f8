"""W3C Trace Context as idgate reads it: strict (one traceparent, version 00, lower-case hex, ids not zero),
bounded (tracestate at most 512 characters and 32 members), anything else starting a new trace."""

from __future__ import annotations

import pytest

from proxy.tracing.propagation import (
    MAX_TRACESTATE_CHARS, MAX_TRACESTATE_MEMBERS, format_traceparent, format_xray, parse_parent, parse_traceparent,
    parse_tracestate,
)

TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
PARENT = f"00-{TRACE}-{SPAN}-01"


def test_a_well_formed_traceparent_gives_its_ids_and_sampled_flag() -> None:
    assert parse_traceparent([PARENT]) == (int(TRACE, 16), int(SPAN, 16), True)
    assert parse_traceparent([PARENT[:-2] + "00"]) == (int(TRACE, 16), int(SPAN, 16), False)
    assert parse_traceparent([PARENT[:-2] + "03"])[2] is True        # unknown flags are ignored, not refused


@pytest.mark.parametrize("values", [
    [], [PARENT, PARENT], [PARENT.upper()], [PARENT + "-00"], [" " + PARENT], ["01" + PARENT[2:]],
    ["ff" + PARENT[2:]], [f"00-{'0' * 32}-{SPAN}-01"], [f"00-{TRACE}-{'0' * 16}-01"], [f"00-{TRACE[:-1]}-{SPAN}-01"],
    [PARENT.replace("-", "_")], ["00-" + "g" * 32 + f"-{SPAN}-01"], ["x" * 10000], [PARENT + "\x00"],
], ids=["none", "twice", "upper", "suffix", "space", "version-01", "version-ff", "zero-trace", "zero-span", "short",
        "separator", "not-hex", "huge", "nul"])
def test_anything_else_is_no_parent(values: list[str]) -> None:
    assert parse_traceparent(values) is None
    assert parse_parent(values, ["a=b"]) is None


def test_tracestate_members_are_kept_in_order_across_headers() -> None:
    assert parse_tracestate(["rojo=00f067aa0ba902b7, congo=t61rcWkgMzE", "tenant@vendor=x"]) == (
        ("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE"), ("tenant@vendor", "x"))
    assert parse_tracestate(["a=1,,b=2"]) == (("a", "1"), ("b", "2"))       # empty members are allowed


@pytest.mark.parametrize("values", [
    ["a=1,a=2"], ["Upper=1"], ["a=1,=2"], ["a"], ["a=1 2,b=\x7f"], ["a=" + "x" * (MAX_TRACESTATE_CHARS)],
    [",".join(f"k{i}=v" for i in range(MAX_TRACESTATE_MEMBERS + 1))], ["a=b=c"], ["a=,b=1"],
], ids=["duplicate-key", "upper-key", "no-key", "no-value", "control", "too-long", "too-many", "equals", "empty-value"])
def test_a_bad_tracestate_is_dropped_whole_but_the_parent_stays(values: list[str]) -> None:
    assert parse_tracestate(values) == ()
    parent = parse_parent([PARENT], values)
    assert parent is not None and parent.tracestate == ()


def test_the_headers_written_upstream() -> None:
    assert format_traceparent(TRACE, SPAN, True) == PARENT
    assert format_traceparent(f"{1:032x}", f"{2:016x}", False) == f"00-{1:032x}-{2:016x}-00"
    assert format_xray(TRACE, SPAN, False) == \
        f"Root=1-{TRACE[:8]}-{TRACE[8:]};Parent={SPAN};Sampled=0"


def test_tracestate_at_the_limit_is_kept_and_one_over_is_dropped() -> None:
    first, second = "a=" + "x" * 254, "b=" + "y" * 253
    assert len(first + "," + second) == MAX_TRACESTATE_CHARS
    assert parse_tracestate([first, second]) == (("a", "x" * 254), ("b", "y" * 253))
    assert parse_tracestate([first, second + "y"]) == ()
    members = [f"k{i:02d}=" + "v" * 10 for i in range(32)]          # 32 members, 14 chars each, 479 with commas
    assert len(parse_tracestate([",".join(members)])) == 32
    assert len(parse_tracestate(members)) == 32                      # the same, one header each
    assert parse_tracestate(members + ["x" * 40]) == ()              # the headers together over 512
