"""A misbehaving upstream, over raw sockets: every malformed answer becomes a 502 (or, once its head was
relayed, an aborted client connection), the outcome record says why, bytes an upstream smuggles after an
answer never become the next request's answer, and the next request gets a fresh connection.  Then a
seeded mutation loop over valid answers, against the client itself: it never hangs, never raises anything
but its own exceptions, never returns bytes beyond the framing, and never lets them leak into the next
exchange."""

from __future__ import annotations

import asyncio
import os
import random

import pytest

from proxy.transport import http1
from tests.harness.processes import HOST
from tests.harness.raw_upstream import CLOSE, HANG, RawRequest, Step, ok, raw_stack, raw_upstream


def first_then_fresh(wire: list[Step]):
    """The first connection's first request gets `wire`; everything else a fresh, honest answer."""
    def answer(request: RawRequest) -> list[Step]:
        if (request.connection, request.index) == (1, 1):
            return wire
        return [ok(b"fresh")]
    return answer


async def assert_next_request_is_fresh(stack) -> None:
    assert await stack.request("/v1/orders/next") == (200, b"fresh")
    assert stack.upstream.requests[-1].connection == 2


REFUSED_BEFORE_THE_HEAD = [
    pytest.param(b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", id="bad-status-line"),
    pytest.param(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage", id="garbage-bytes"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n", id="nul-in-header-value"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n", id="cr-in-header-value"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-A: a\nX-Injected: 1\r\nContent-Length: 0\r\n\r\n", id="lf-in-header-value"),
    pytest.param(b"HTTP/1.1 200 OK\r\nBad Header: x\r\nContent-Length: 0\r\n\r\n", id="bad-header-name"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", id="duplicate-content-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\nhello",
                 id="conflicting-content-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                 id="content-length-with-transfer-encoding"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello", id="unsupported-transfer-encoding"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", id="bad-chunk-size"),
    pytest.param(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", id="101-on-a-plain-request"),
    pytest.param(b"HTTP/1.1 200 " + b"x" * (1024 * 1024) + b"\r\n\r\n", id="1-mb-status-line"),
    pytest.param([b"HTTP/1.1 200 OK\r\n", *[b"X-Endless: " + b"e" * 1000 + b"\r\n", 0.0] * 200, HANG],
                 id="endless-header-stream"),
    pytest.param([b"HTTP/1.1 100 Continue\r\n\r\n", 0.0] * 20 + [HANG], id="endless-interim-answers"),
]


@pytest.mark.parametrize("wire", REFUSED_BEFORE_THE_HEAD)
async def test_a_malformed_answer_is_a_502_recorded_and_the_connection_discarded(tmp_path, wire):
    # The upstream keeps its connection open afterwards: the refusal does not wait for it to close.
    async with raw_stack(tmp_path, first_then_fresh(wire if isinstance(wire, list) else [wire, HANG])) as stack:
        status, body = await stack.request("/v1/orders/7")
        assert status == 502
        assert isinstance(body, bytes) and b"bad_gateway" in body and HOST.encode() not in body
        assert b"hello" not in body and b"garbage" not in body
        [outcome] = await stack.outcomes()
        assert (outcome["status"], outcome["error"]) == (502, "upstream_bad_response")
        await assert_next_request_is_fresh(stack)


async def test_an_upstream_that_closes_without_answering_is_a_502(tmp_path):
    async with raw_stack(tmp_path, first_then_fresh([CLOSE])) as stack:
        assert (await stack.request("/v1/orders/7"))[0] == 502
        assert (await stack.outcomes())[0]["error"] == "upstream_failed"
        await assert_next_request_is_fresh(stack)


@pytest.mark.parametrize("rest,error,relayed", [
    pytest.param(b"zz\r\nrest\r\n0\r\n\r\n", "upstream_bad_response", 5, id="bad-chunk-size-mid-body"),
    pytest.param(b"4\r\nrestEXTRA\r\n0\r\n\r\n", "upstream_bad_response", 9, id="chunk-longer-than-its-size"),
    pytest.param(b"a\r\nhal", "upstream_failed", 8, id="close-mid-chunk"),
])
async def test_a_body_that_breaks_its_framing_after_the_head_aborts_the_client_connection(tmp_path, rest, error,
                                                                                         relayed):
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"
    async with raw_stack(tmp_path, first_then_fresh([head, 0.1, rest, CLOSE])) as stack:
        status, body = await stack.request("/v1/orders/7")
        assert status == 200 and isinstance(body, Exception)    # the head was relayed; the body is cut, visibly
        [outcome] = await stack.outcomes()
        # Only bytes inside the framing were relayed ("first", then what a chunk held before it broke).
        assert (outcome["status"], outcome["error"], outcome["bytes_out"]) == (502, error, relayed)
        await assert_next_request_is_fresh(stack)


async def test_a_body_shorter_than_its_length_is_cut_visibly(tmp_path):
    wire = [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly forty bytes of the hundred promised..", CLOSE]
    async with raw_stack(tmp_path, first_then_fresh(wire)) as stack:
        status, body = await stack.request("/v1/orders/7")
        assert status == 200 and isinstance(body, Exception)
        assert [(o["status"], o["error"]) for o in await stack.outcomes()] == [(502, "upstream_failed")]
        await assert_next_request_is_fresh(stack)


@pytest.mark.parametrize("delay", [None, 0.05], ids=["same-write", "moments-later"])
async def test_bytes_smuggled_after_an_answer_never_answer_the_next_request(tmp_path, delay):
    smuggled = ok(b"SMUGGLED", extra="X-Smuggled: yes\r\n")
    first = ok(b"first")
    async with raw_stack(tmp_path, first_then_fresh([first + smuggled] if delay is None else
                                                    [first, delay, smuggled])) as stack:
        assert await stack.request("/v1/orders/1") == (200, b"first")
        if delay:
            await asyncio.sleep(delay * 3)
        assert await stack.request("/v1/orders/2") == (200, b"fresh")
        assert stack.upstream.requests[-1].connection == 2


async def test_a_head_answer_with_a_body_is_relayed_without_it(tmp_path):
    async with raw_stack(tmp_path, first_then_fresh([ok(b"a body a HEAD answer must not have")])) as stack:
        assert await stack.request("/v1/orders/1", method="HEAD") == (200, b"")
        await assert_next_request_is_fresh(stack)


async def test_interim_answers_are_skipped_and_the_final_one_relayed(tmp_path):
    wire = [b"HTTP/1.1 100 Continue\r\n\r\n", 0.02, b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n",
            ok(b"final", extra="X-Final: 1\r\n")]
    async with raw_stack(tmp_path, lambda r: wire) as stack:
        async with stack.http.post(stack.idgate.url + "/v1/orders/1", data=b"body", headers={
                "Host": "orders.internal", "Authorization": f"Bearer {stack.token}",
                "Expect": "100-continue"}) as response:
            assert (response.status, await response.read()) == (200, b"final")
            assert response.headers["X-Final"] == "1" and "Link" not in response.headers
        assert stack.upstream.requests[0].header("Expect") == []    # idgate answered the client's itself


# --- a seeded mutation loop over valid answers, against the client ---

VALID = [
    ok(b"hello world", extra="Content-Type: text/plain\r\n"),
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nX-Empty: 1\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"after continue"),
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nnot\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nold!",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
]
INTERESTING = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b"0", b"9", b"f", b";", b",", b"\x7f", b"\xff",
               b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n", b"\r\n\r\n",
               b"HTTP/1.1 200 OK\r\n"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        where = rng.randrange(len(out) + 1)
        kind = rng.randrange(7)
        if kind == 0 and out:
            out[min(where, len(out) - 1)] = rng.randrange(256)
        elif kind == 1:
            out[where:where] = rng.choice(INTERESTING)
        elif kind == 2:
            del out[where:where + rng.randint(1, 8)]
        elif kind == 3:
            out[where:where] = out[where:where + rng.randint(1, 16)]
        elif kind == 4:
            del out[where:]
        elif kind == 5:
            out += rng.choice([ok(b"SMUGGLED"), b"garbage", b"\r\n", bytes(rng.randrange(256) for _ in range(8))])
        else:
            digits = [i for i, b in enumerate(out) if 0x30 <= b <= 0x39]
            if digits:
                out[rng.choice(digits)] = rng.choice(b"0123456789abcdef")
    return bytes(out)


def final_head(wire: bytes) -> tuple[int, dict[str, list[str]], int] | None:
    """An independent, strict reading of the final answer's head: status, fields, where the body starts."""
    start = 0
    while True:
        end = wire.find(b"\r\n\r\n", start)
        if end < 0:
            return None
        lines = wire[start:end].split(b"\r\n")
        try:
            version, status_text = lines[0].decode("ascii").split(" ", 2)[:2]
            status = int(status_text)
            fields: dict[str, list[str]] = {}
            for line in lines[1:]:
                name, value = line.decode("latin-1").split(":", 1)
                fields.setdefault(name.lower(), []).append(value.strip(" \t"))
        except (ValueError, UnicodeDecodeError):
            return None
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            return None
        if 100 <= status < 200:
            start = end + 4
            continue
        return status, fields, end + 4


def dechunk(data: bytes) -> bytes | None:
    body, at = b"", 0
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            return None
        size_text = data[at:line_end].split(b";")[0]
        if not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
            return None
        size = int(size_text, 16)
        if size == 0:
            return body
        body += data[line_end + 2:line_end + 2 + size]
        at = line_end + 2 + size + 2


def expected_body(wire: bytes, method: str) -> bytes | None:
    """What framing allows the body to be, or None when this reading cannot tell."""
    head = final_head(wire)
    if head is None:
        return None
    status, fields, start = head
    if method == "HEAD" or status in (204, 304):
        return b""
    lengths, codings = fields.get("content-length", []), fields.get("transfer-encoding", [])
    if lengths and not codings and len(lengths) == 1 and lengths[0].isdigit():
        return wire[start:start + int(lengths[0])]
    if codings == ["chunked"] and not lengths:
        return dechunk(wire[start:])
    return None


async def test_mutated_answers_never_hang_leak_or_raise_foreign_exceptions():
    """300 seeded cases by default; IDGATE_FUZZ_SEED and IDGATE_FUZZ_CASES explore further."""
    rng = random.Random(int(os.environ.get("IDGATE_FUZZ_SEED", "20240607")))
    cases: dict[int, tuple[bytes, bool]] = {}

    def answer(request: RawRequest) -> list[Step]:
        kind, number = request.target.split("/")[1:3]
        if kind == "marker":
            return [ok(f"marker-{number}".encode())]
        wire, close = cases[int(number)]
        return [wire, CLOSE] if close else [wire]    # else it keeps the connection, and reads the next request

    outcomes = {"answered": 0, "checked": 0, "refused": 0}
    async with raw_upstream(answer) as upstream:
        for number in range(int(os.environ.get("IDGATE_FUZZ_CASES", "300"))):
            wire = mutate(rng.choice(VALID), rng)
            method = rng.choice(["GET", "GET", "HEAD"])
            cases[number] = (wire, rng.random() < 0.5)
            pool = http1.Pool()
            origin = pool.origin(f"http://{HOST}:{upstream.port}")
            try:
                async with asyncio.timeout(3):            # never hangs: every read is bounded by read_timeout
                    try:
                        async with pool.request(origin, method, f"/case/{number}", [("Host", "u")],
                                                connect_timeout=1, read_timeout=0.1) as exchange:
                            body = b""
                            while chunk := await exchange.read():
                                body += chunk
                        outcomes["answered"] += 1
                        expected = expected_body(wire, method)
                        if expected is not None:
                            outcomes["checked"] += 1
                            assert body == expected, (number, wire, method, body)
                        assert len(body) <= len(wire)
                    except http1.ClientError:
                        outcomes["refused"] += 1      # its own exception; anything else fails the test
                    # Whatever the first answer did, the next exchange gets its own answer, exactly.
                    async with pool.request(origin, "GET", f"/marker/{number}", [("Host", "u")],
                                            connect_timeout=1, read_timeout=1) as marker:
                        assert (marker.status, await marker.read()) == (200, f"marker-{number}".encode()), (number, wire)
            finally:
                await pool.close()
    # The loop exercised both sides: answers that still frame (most checked against an independent
    # reading of their framing), and refusals.
    assert min(outcomes.values()) > 30, outcomes
