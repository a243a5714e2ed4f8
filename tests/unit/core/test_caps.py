"""Capping attacker-controlled values for the audit (proxy.core.caps): a value within its limit is kept
exactly, any other becomes an object that says it was cut, and either way the record bytes are bounded."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from proxy.audit.chain import canonical
from proxy.core import caps
from proxy.core.caps import capped, capped_list, capped_optional

# The capped form's keys, quotes and 64-hex hash without its prefix, for a length of up to 10 digits.
CAPPED_OVERHEAD = len(json.dumps({"capped": True, "chars": 10**9, "prefix": "", "sha256": "0" * 64},
                                 separators=(",", ":")))


def record_bytes(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=True, separators=(",", ":")))


def bound(limit: int) -> int:
    """What one capped field may take in a record: its limit, or a capped form with half of it."""
    return max(limit + 2, max(limit // 2, 32) + CAPPED_OVERHEAD)


ADVERSARIAL = {
    "plain": "a",
    "quote": '"',
    "backslash": "\\",
    "control": "\x01",
    "delete": "\x7f",
    "latin-1": "\xe9",
    "line separator": "\u2028",
    "emoji": "\U0001f600",
    "undecodable byte": "\udcff",
    "lone surrogate": "\ud800",
    "mixed": 'a"\\\x01\U0001f600\udcff',
}


def test_a_value_within_its_limit_is_kept_as_it_is() -> None:
    value = "/v1/orders/7"
    assert capped(value, caps.PATH) is value
    assert capped('a"b\\c', 9) == 'a"b\\c'       # 5 characters, 7 bytes as JSON


def test_the_limit_counts_json_bytes_not_characters() -> None:
    assert capped("a" * 16, 16) == "a" * 16
    assert isinstance(capped("a" * 17, 16), dict)
    assert capped('"' * 8, 16) == '"' * 8            # \" is 2 bytes
    assert isinstance(capped('"' * 9, 16), dict)
    assert isinstance(capped("\U0001f600" * 2, 16), dict)   # 24 bytes as \ud83d\ude00 twice


def test_a_capped_value_says_how_long_it_was_and_what_it_was() -> None:
    value = "/v1/orders/" + "x" * 5000
    cut = capped(value, caps.PATH)
    assert cut == {"capped": True, "chars": len(value), "sha256": hashlib.sha256(value.encode()).hexdigest(),
                   "prefix": value[: caps.PATH // 2]}


def test_the_hash_is_over_the_bytes_as_received() -> None:
    wire = b"\xff\xfe" * 200 + "\U0001f600".encode()
    as_aiohttp_decodes = wire.decode("utf-8", "surrogateescape")
    cut = capped(as_aiohttp_decodes, caps.HOST)
    assert isinstance(cut, dict) and cut["sha256"] == hashlib.sha256(wire).hexdigest()
    assert cut["chars"] == len(as_aiohttp_decodes)


def test_a_lone_surrogate_from_json_is_hashed_without_failing() -> None:
    value = "\ud800" * 300
    cut = capped(value, caps.CLAIM)
    assert isinstance(cut, dict) and cut["sha256"] == hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


@pytest.mark.parametrize("limit", [caps.METHOD, caps.CLIENT_ADDR, caps.HOST, caps.PATH])
@pytest.mark.parametrize("unit", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
@pytest.mark.parametrize("repeat", [1, 7, 100, 16384])
def test_every_value_fits_its_bound_and_stays_sealable(limit: int, unit: str, repeat: int) -> None:
    value = unit * repeat
    result = capped(value, limit)
    assert record_bytes(result) <= bound(limit)
    canonical({"value": result})                                  # the audit chain can seal it
    if isinstance(result, dict):
        assert result["capped"] is True and value.startswith(result["prefix"])
        assert record_bytes(result["prefix"]) - 2 <= max(limit // 2, 32)
        assert len(result["prefix"]) >= 1 or record_bytes(unit) - 2 > max(limit // 2, 32)
    else:
        assert result == value


def test_the_prefix_is_as_long_as_its_budget_allows() -> None:
    value = "ab\U0001f600" * 500
    cut = capped(value, caps.PATH)
    assert isinstance(cut, dict)
    budget = caps.PATH // 2
    assert record_bytes(cut["prefix"]) - 2 <= budget < record_bytes(value[: len(cut["prefix"]) + 1]) - 2


def test_an_absent_value_stays_absent() -> None:
    assert capped_optional(None, caps.CLAIM) is None
    assert capped_optional("airflow", caps.CLAIM) == "airflow"


def test_a_list_within_its_count_keeps_every_item_each_capped() -> None:
    groups = ["data-eng", "g" * 500]
    assert capped_list(groups, caps.GROUPS, caps.GROUP) == ["data-eng", capped("g" * 500, caps.GROUP)]
    assert capped_list((), caps.GROUPS, caps.GROUP) == []


def test_a_list_over_its_count_says_how_many_and_hashes_the_whole_list() -> None:
    groups = [f"group-{i}" for i in range(200)]
    cut = capped_list(groups, caps.GROUPS, caps.GROUP)
    whole = json.dumps(groups, separators=(",", ":")).encode()
    assert cut == {"capped": True, "count": 200, "sha256": hashlib.sha256(whole).hexdigest(),
                   "first": groups[: caps.GROUPS]}


def test_the_largest_list_is_bounded() -> None:
    groups = ['"\U0001f600' * 1000] * 256           # as many as the verifier accepts, each huge
    cut = capped_list(groups, caps.GROUPS, caps.GROUP)
    assert record_bytes(cut) <= caps.GROUPS * (bound(caps.GROUP) + 1) + 200
