"""idgate's own log lines from a real listener under faults: a client that leaves, a request the parser
refuses, a handler that crashes, each at its level and none with a token."""

from __future__ import annotations

import asyncio

from tests.harness.processes import HOST
from tests.harness.servers import raw_http


def failures(lines: list[dict]) -> list[dict]:
    return [line for line in lines if line["level"] in ("warning", "error", "critical")]


async def test_a_client_that_leaves_mid_response_is_a_debug_line(stack, json_logs):
    out = json_logs("debug")
    reader, writer = await asyncio.open_connection(HOST, stack.idgate.port)
    writer.write(f"GET /v1/orders/__big?bytes=200000000 HTTP/1.1\r\nHost: orders.internal\r\n"
                 f"Authorization: Bearer {stack.etl_token()}\r\n\r\n".encode())
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    await reader.readexactly(65536)
    writer.transport.abort()
    await stack.idgate.settled()
    lines = out.lines()
    # The test's upstream (a plain aiohttp server) sees its client, idgate, leave too: aiohttp's ERROR
    # record of that is a debug line as well.
    assert failures(lines) == []
    assert {(line["logger"], line["msg"]) for line in lines} == {("idgate.http", "client disconnected"),
                                                                ("aiohttp.server", "client disconnected")}
    [left] = [line for line in lines if line["logger"] == "idgate.http"]
    assert left == {**left, "level": "debug", "peer": "127.0.0.1", "disconnect": "ClientConnectionResetError"}
    outcomes = [r for r in await stack.idgate.audit_records() if r["event"] == "outcome"]
    assert [o["error"] for o in outcomes] == ["client_disconnected"]          # the record that counts


async def test_a_malformed_request_line_is_an_info_line_with_the_peer(stack, json_logs):
    out = json_logs("info")
    token = stack.etl_token()
    response = await raw_http(stack.idgate.port, f"GET /v1/orders HTTP/1.1 {token}\r\nHost: orders.internal\r\n"
                                                 f"Authorization: Bearer {token}\r\n\r\n".encode())
    assert response.status == 400
    await stack.idgate.settled()
    assert token not in out.text
    [line] = out.lines()
    assert line == {**line, "level": "info", "logger": "idgate.http", "msg": "request refused by the HTTP parser",
                    "peer": "127.0.0.1"} and "exc" not in line


async def test_a_handler_crash_is_an_error_line_with_its_traceback_and_no_token(stack, json_logs, monkeypatch):
    out = json_logs("info")
    token = stack.etl_token()

    def broken_upstream(*args: object, **kwargs: object) -> object:
        # A bug whose message prints what it was given: the headers idgate was about to forward.
        raise RuntimeError(f"upstream client bug: {args!r} Authorization: Bearer {token}")

    monkeypatch.setattr(stack.idgate.services.upstream, "request", broken_upstream)
    response = await raw_http(stack.idgate.port, f"GET /v1/orders/7 HTTP/1.1\r\nHost: orders.internal\r\n"
                                                 f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode())
    assert response.status == 500 and token.encode() not in response.body
    await stack.idgate.settled()
    assert token not in out.text
    [crash] = failures(out.lines())
    assert crash == {**crash, "level": "error", "logger": "idgate.http", "msg": "request handler failed"}
    assert "Traceback (most recent call last)" in crash["exc"] and "in broken_upstream" in crash["exc"]
    assert "RuntimeError: upstream client bug" in crash["exc"] and "Authorization: [redacted]" in crash["exc"]
