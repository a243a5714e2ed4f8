"""Attack class 4: the audit cannot be used to fill the disk cheaply.  A request refused before
authentication adds one record of at most 2 KB to the audit file, whatever it carries within the
listener's own limits (a request line of 8190 bytes, 100 headers of 16 KiB each), and every value
that was cut says so in its record: its length in characters, the SHA-256 of its bytes, a prefix.

Each case goes through the real running idgate and measures the bytes its refusal added to the file."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pytest

from proxy.audit import segment_files, verify_files
from proxy.config import LimitsConfig
from tests.harness.servers import raw_http
from tests.harness.stack import Stack

RECORD_BUDGET = 2048                       # audit bytes one unauthenticated refusal may add
LINE = LimitsConfig().max_line_bytes       # 8190: the request line, method to version
FIELD = LimitsConfig().max_header_bytes    # 16384: one header, name and value
EMOJI = "\U0001f600"                       # 4 bytes of UTF-8, one character, 12 bytes as a JSON escape


def request(target: bytes, *, method: bytes = b"GET", host: bytes = b"orders.internal", extra: bytes = b"") -> bytes:
    return (method + b" " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + extra + b"Connection: close\r\n\r\n")


def longest_target(prefix: bytes, unit: bytes, method: bytes = b"GET") -> bytes:
    """The longest target of `prefix` + `unit`s whose request line fits the listener's limit."""
    room = LINE - len(method + b"  HTTP/1.1") - len(prefix)
    return prefix + unit * (room // len(unit))


def header_value(name: bytes, unit: bytes) -> bytes:
    """The longest value of `unit`s that keeps `name: value` within the per-header limit."""
    return unit * ((FIELD - len(name)) // len(unit))


@dataclass(frozen=True)
class Flood:
    name: str
    request: bytes
    status: int
    reason: str
    # The target fields that must be capped, each with its value as idgate saw it (normalized, for `path`).
    capped: tuple[tuple[str, bytes], ...]

    def __str__(self) -> str:
        return self.name


LONG_PLAIN = longest_target(b"/v1/orders/", b"a")
LONG_QUOTES = longest_target(b"/v1/orders/", b'"')            # normalized to %22: three times as long
QUOTES_NORMALIZED = LONG_QUOTES.replace(b'"', b"%22")
LONG_BACKSLASHES = longest_target(b"/v1/orders/", b"\\")      # refused raw, each a 2-byte JSON escape
EMOJI_HOST = header_value(b"Host", EMOJI.encode())             # 12 JSON bytes per character
RAW_BYTES_HOST = header_value(b"Host", b"\xff")                # not UTF-8: kept as surrogate escapes
GARBAGE_TOKEN = b"Authorization: Bearer " + header_value(b"Authorization: Bearer ", b"a") + b"\r\n"
# With Host and Connection: 99 headers, within the limit of 100.
HUGE_HEADERS = b"".join(b"X-Pad-%03d: %s\r\n" % (i, header_value(b"X-Pad-000", b"\"")) for i in range(97))
TOO_MANY = b"".join(b"X-Pad-%03d: x\r\n" % i for i in range(150))

REVERSE_PROXY_FLOODS = (
    Flood("longest valid path, no token", request(LONG_PLAIN), 401, "missing_token", (("path", LONG_PLAIN),)),
    Flood("longest path of quotes, no token", request(LONG_QUOTES), 401, "missing_token",
          (("path", QUOTES_NORMALIZED),)),
    Flood("longest path of quotes, garbage token of 16 KiB", request(LONG_QUOTES, extra=GARBAGE_TOKEN), 401,
          "token_too_large", (("path", QUOTES_NORMALIZED),)),
    Flood("longest path trick of backslashes", request(LONG_BACKSLASHES), 400, "backslash",
          (("raw_path", LONG_BACKSLASHES),)),
    Flood("host of 16 KiB of emoji", request(b"/v1/orders/7", host=EMOJI_HOST), 400, "bad_host",
          (("host", EMOJI_HOST),)),
    Flood("host of 16 KiB of bytes that are not UTF-8", request(b"/v1/orders/7", host=RAW_BYTES_HOST), 400,
          "bad_host", (("host", RAW_BYTES_HOST),)),
    Flood("97 headers of 16 KiB of quotes, longest path, no token", request(LONG_QUOTES, extra=HUGE_HEADERS), 401,
          "missing_token", (("path", QUOTES_NORMALIZED),)),
    Flood("150 headers and the longest path trick", request(LONG_BACKSLASHES, extra=TOO_MANY), 431,
          "too_many_headers", (("raw_path", LONG_BACKSLASHES),)),
    Flood("a header over 16 KiB and the longest path trick",
          request(LONG_BACKSLASHES, extra=b"X-Big: " + b"a" * (FIELD + 1) + b"\r\n"), 431, "header_too_large",
          (("raw_path", LONG_BACKSLASHES),)),
    Flood("longest path trick with an emoji host", request(LONG_BACKSLASHES, host=EMOJI_HOST), 400, "bad_host",
          (("host", EMOJI_HOST), ("raw_path", LONG_BACKSLASHES))),
)

AUTH = b"/.idgate/auth"
LONG_ORIGINAL = b"/v1/orders/" + header_value(b"X-Original-URI: /v1/orders/", b"a")
EMOJI_ORIGINAL = b"/v1/orders/" + header_value(b"X-Original-URI: /v1/orders/", EMOJI.encode())
EMOJI_METHOD = header_value(b"X-Original-Method", EMOJI.encode())


# A trusted proxy's request id is kept (up to 128 characters): the longest one makes the worst case.
TRUSTED_ID = b"X-Request-Id: " + b"r" * 128 + b"\r\n"


def original(method: bytes, uri: bytes) -> bytes:
    return request(AUTH, extra=TRUSTED_ID + b"X-Original-Method: " + method + b"\r\nX-Original-URI: " + uri + b"\r\n")


FORWARD_AUTH_FLOODS = (
    Flood("forward auth: original URI of 16 KiB, no token", original(b"GET", LONG_ORIGINAL), 401, "missing_token",
          (("path", LONG_ORIGINAL),)),
    Flood("forward auth: original URI of 16 KiB of emoji", original(b"GET", EMOJI_ORIGINAL), 400,
          "invalid_character", (("raw_path", EMOJI_ORIGINAL),)),
    Flood("forward auth: original method of 16 KiB of emoji", original(EMOJI_METHOD, b"/v1/orders/7"), 400,
          "bad_method", (("method", EMOJI_METHOD),)),
    Flood("forward auth: forwarded host of 16 KiB of emoji",
          request(AUTH, extra=TRUSTED_ID + b"X-Forwarded-Method: GET\r\nX-Forwarded-Uri: /v1/orders/7\r\n"
                  b"X-Forwarded-Host: " + EMOJI_HOST + b"\r\n"), 400, "bad_host", (("host", EMOJI_HOST),)),
)


async def refusal_record(stack: Stack, raw: bytes) -> tuple[int, bytes, dict[str, Any]]:
    """The status of one raw request and exactly the audit bytes (and record) its refusal added."""
    audit = stack.idgate.services.config.audit.path
    await stack.idgate.settled()
    before = audit.stat().st_size
    response = await raw_http(stack.idgate.port, raw)
    await stack.idgate.settled()
    added = audit.read_bytes()[before:]
    assert added.count(b"\n") == 1 and added.endswith(b"\n"), "one refusal, one record"
    return response.status, added, json.loads(added)


def assert_visibly_capped(recorded: Any, value: bytes) -> None:
    """A cut value is an object no client can send (a wire value is always a string): it gives the
    length and hash of the whole value, and a prefix of it."""
    text = value.decode("utf-8", "surrogateescape")
    assert isinstance(recorded, dict), f"expected a capped value, got {str(recorded)[:80]!r}"
    assert recorded["capped"] is True and recorded["chars"] == len(text)
    assert recorded["sha256"] == hashlib.sha256(value).hexdigest()
    assert recorded["prefix"] and text.startswith(recorded["prefix"])


async def assert_bounded_refusal(stack: Stack, flood: Flood) -> None:
    status, added, record = await refusal_record(stack, flood.request)
    assert status == flood.status
    assert len(added) <= RECORD_BUDGET, f"{flood}: {len(added)} audit bytes for one refusal"
    assert record["event"] == "decision" and record["decision"] == "deny" and record["reasons"] == [flood.reason]
    assert record["identity"] is None
    for field, value in flood.capped:
        assert_visibly_capped(record["target"][field], value)
    assert stack.upstream.received == []


# The listener's head cap (limits.max_head_bytes) refuses the largest heads before they are parsed, so
# nothing is audited for them; lifted here so that every flood reaches admission and its record.
HEAD_CAP_LIFTED = {"max_head_bytes": 4 * 1024 * 1024}


@pytest.mark.parametrize("flood", REVERSE_PROXY_FLOODS, ids=str)
async def test_a_refusal_before_authentication_adds_at_most_2kb_to_the_audit(make_stack, flood):
    await assert_bounded_refusal(await make_stack(limits=HEAD_CAP_LIFTED), flood)


@pytest.mark.parametrize("flood", FORWARD_AUTH_FLOODS, ids=str)
async def test_a_forward_auth_refusal_adds_at_most_2kb_to_the_audit(make_stack, flood):
    stack = await make_stack(trusted_proxies=["127.0.0.1/32"], limits=HEAD_CAP_LIFTED)
    await assert_bounded_refusal(stack, flood)


async def test_values_within_their_caps_are_recorded_exactly(stack):
    target = b"/v1/orders/" + b"a" * 400 + b"/\\x"
    status, _, record = await refusal_record(stack, request(target, host=b"Orders.Internal" + b"\"" * 40))
    assert status == 400 and record["reasons"] == ["bad_host"]
    assert record["target"] == {"method": "GET", "host": "Orders.Internal" + '"' * 40, "raw_path": target.decode()}


async def test_an_unverified_tokens_claims_never_reach_the_audit(stack):
    """Only a verified identity is recorded: a token with a forged signature carries attacker-chosen
    claims of any size, and none of them may land in the audit."""
    header, payload, _ = stack.etl_token().split(".")
    forged = f"{header}.{payload}.{'A' * 86}"
    marker = "svc-etl-7"
    forged_header = f"Authorization: Bearer {forged}\r\n".encode()
    status, added, record = await refusal_record(stack, request(b"/v1/orders/7", extra=forged_header))
    assert status == 401 and record["reasons"] == ["bad_signature"]
    assert record["identity"] is None and marker.encode() not in added and payload.encode() not in added


async def test_an_authenticated_callers_claims_are_capped_too(stack):
    """A verified token's claims come from the issuer, but some issuers let users choose them: they are
    capped as well (each group, and how many are listed)."""
    subject = "svc-" + "s" * 1000
    groups = ("data-eng", *(f"g{i:03d}-" + "x" * 36 for i in range(70)))
    response = await stack.get("/v1/orders/7", token=stack.issuer.token(subject, groups, tenant="acme"))
    [record] = await stack.decisions()
    assert record["decision"] == ("allow" if response.status == 200 else "deny")
    assert_visibly_capped(record["identity"]["sub"], subject.encode())
    listed = record["identity"]["groups"]
    assert listed["capped"] is True and listed["count"] == len(groups) and listed["first"] == list(groups[:64])


async def test_retention_bounds_the_audit_on_disk_under_a_flood(make_stack, tmp_path):
    """With retention configured, a flood of refusals costs at most max_segments rotated segments plus
    the live one, and what remains still verifies."""
    audit_path = tmp_path / "flooded" / "audit.jsonl"
    stack = await make_stack(audit={"path": str(audit_path), "rotate_bytes": 16384, "max_segments": 3})
    for _ in range(150):                                   # about 1 KB each: nine rotations or so
        assert (await raw_http(stack.idgate.port, request(LONG_QUOTES))).status == 401
    await stack.idgate.settled()
    files = segment_files(audit_path)
    assert len(files) <= 4 and files[-1] == audit_path
    assert sum(f.stat().st_size for f in files) <= 4 * (16384 + RECORD_BUDGET)
    report = verify_files(files)
    assert report.ok, report.problems
    assert report.starts_after > 0
    metrics = stack.idgate.services.metrics.registry
    assert metrics.get_sample_value("idgate_audit_segments_deleted_total") >= 5
