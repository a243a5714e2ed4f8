"""Attacks on the HTTP layer below the handlers, against a running idgate over raw sockets: requests
aiohttp's parser refuses, heads that never finish, too many connections.  No answer echoes request
bytes or names the framework; every refusal is counted; handler crashes stay crashes."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiohttp import web

from proxy.app.protocol import ConnectionBounds, GuardedAppRunner
from tests.harness.servers import HOST, raw_http

SECRET = "Bearer eyJzZWNyZXQ.c2VjcmV0.c2ln"     # stands for a token on the refused line


def refusals(stack, listener: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for metric in stack.idgate.services.metrics.http_refused.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels["listener"] == listener:
                counts[sample.labels["reason"]] = sample.value
    return counts


def assert_idgate_answer(response, status: int) -> dict[str, str]:
    assert response.status == status
    head = response.head.lower()
    assert "server: idgate" in head and "aiohttp" not in head and "python" not in head
    assert SECRET.encode() not in response.body and b"eyJ" not in response.body and b"^" not in response.body
    body = json.loads(response.body)
    assert set(body) == {"code", "message", "request_id"}
    return body


# Each is refused by aiohttp's parser before any idgate handler runs; each carries the "token".
PARSER_REFUSALS = {
    "obs_fold": f"GET /v1/orders HTTP/1.1\r\nHost: orders.internal\r\nAuthorization: x\r\n {SECRET}\r\n\r\n",
    "space_before_colon": f"GET /v1/orders HTTP/1.1\r\nHost: orders.internal\r\nAuthorization : {SECRET}\r\n\r\n",
    "tab_in_target": f"GET /v1/orders\t{SECRET} HTTP/1.1\r\nHost: orders.internal\r\n\r\n",
    "lowercase_method": f"get /v1/orders HTTP/1.1\r\nHost: orders.internal\r\nAuthorization: {SECRET}\r\n\r\n",
    "nul_in_header": f"GET /v1/orders HTTP/1.1\r\nHost: orders.internal\r\nAuthorization: {SECRET}\x00\r\n\r\n",
    "bad_version": f"GET /v1/orders HTTP/9.Q\r\nHost: orders.internal\r\nAuthorization: {SECRET}\r\n\r\n",
    "content_length_and_chunked": (f"POST /v1/orders HTTP/1.1\r\nHost: orders.internal\r\nAuthorization: {SECRET}\r\n"
                                   "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "bad_chunk_size_with_the_head": (f"POST /v1/orders HTTP/1.1\r\nHost: orders.internal\r\nAuthorization: {SECRET}\r\n"
                                     f"Transfer-Encoding: chunked\r\n\r\n{SECRET}\r\n"),
    "line_too_long": f"GET /{'a' * 9000} HTTP/1.1\r\nHost: orders.internal\r\nAuthorization: {SECRET}\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(PARSER_REFUSALS))
async def test_parser_refusals_are_idgates_answer_and_counted(stack, name):
    response = await raw_http(stack.idgate.port, PARSER_REFUSALS[name].encode("latin-1"))
    body = assert_idgate_answer(response, 400)
    assert body["code"] == "bad_request"
    assert stack.upstream.received == []
    assert sum(refusals(stack, "main").values()) == 1


@pytest.mark.parametrize("name", ["obs_fold", "lowercase_method", "line_too_long"])
async def test_the_admin_listener_answers_parser_refusals_the_same_way(stack, name):
    response = await raw_http(stack.idgate.admin_port, PARSER_REFUSALS[name].encode("latin-1"))
    assert_idgate_answer(response, 400)
    assert sum(refusals(stack, "admin").values()) == 1


async def test_the_admin_listener_answers_unknown_paths_in_json(stack):
    response = await raw_http(stack.idgate.admin_port, b"GET /nothing-here HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert_idgate_answer(response, 404)


async def test_a_parser_refusal_is_logged_with_the_peer_and_without_the_bytes(stack, caplog):
    with caplog.at_level(logging.INFO, logger="idgate.http"):
        await raw_http(stack.idgate.port, PARSER_REFUSALS["space_before_colon"].encode())
    [record] = [r for r in caplog.records if r.name == "idgate.http"]
    assert record.levelno == logging.INFO and record.peer == "127.0.0.1"
    assert record.refused and SECRET not in record.getMessage() and record.exc_info is None


async def test_a_head_over_max_head_bytes_is_refused_while_it_is_read(make_stack):
    stack = await make_stack(limits={"max_head_bytes": 16384})
    reader, writer = await asyncio.open_connection(HOST, stack.idgate.port)
    try:
        writer.write(b"GET /v1/orders HTTP/1.1\r\nHost: orders.internal\r\n")
        for i in range(40):               # 40 headers of 1 KiB, each well under every per-field limit
            writer.write(f"X-Pad-{i}: {'p' * 1000}\r\n".encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)   # idgate answers and closes; the head never ended
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 431 ") and b"Server: idgate" in answer and b"pppp" not in answer
    assert refusals(stack, "main") == {"head_too_large": 1}
    assert await stack.decisions() == [] and stack.upstream.received == []


async def open_idle(port: int, count: int) -> list[asyncio.StreamWriter]:
    writers = []
    for _ in range(count):
        _, writer = await asyncio.open_connection(HOST, port)
        writers.append(writer)
    return writers


async def test_connections_per_peer_are_capped(make_stack):
    stack = await make_stack(limits={"max_connections_per_peer": 3})
    held = await open_idle(stack.idgate.port, 3)
    try:
        response = await raw_http(stack.idgate.port, b"GET /v1/orders HTTP/1.1\r\nHost: orders.internal\r\n\r\n")
        body = assert_idgate_answer(response, 503)
        assert body["code"] == "unavailable"
        assert refusals(stack, "main") == {"max_connections_per_peer": 1}
    finally:
        for writer in held:
            writer.close()
            await writer.wait_closed()
    # A slot freed is a slot served again.
    response = await raw_http(stack.idgate.port, f"GET /v1/orders/7 HTTP/1.1\r\nHost: orders.internal\r\n"
                                                 f"Authorization: Bearer {stack.etl_token()}\r\nConnection: close\r\n\r\n".encode())
    assert response.status == 200


async def test_a_trusted_proxy_counts_only_towards_the_total(make_stack):
    stack = await make_stack(limits={"max_connections_per_peer": 2, "max_connections": 4},
                             trusted_proxies=["127.0.0.1/32"])
    held = await open_idle(stack.idgate.port, 4)
    try:
        response = await raw_http(stack.idgate.port, b"GET / HTTP/1.1\r\nHost: orders.internal\r\n\r\n")
        assert_idgate_answer(response, 503)
        assert refusals(stack, "main") == {"max_connections": 1}
    finally:
        for writer in held:
            writer.close()


async def test_a_handler_crash_is_a_logged_crash_not_a_parser_refusal(caplog):
    """The guard turns every idgate error into an answer; anything else is a bug, and must be seen as one."""
    refused: list[str] = []

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app = web.Application()
    app.router.add_get("/", broken)
    runner = GuardedAppRunner(app, ConnectionBounds(10, 10, 65536, 5.0), lambda peer: False, refused.append,
                              access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    try:
        with caplog.at_level(logging.INFO, logger="idgate.http"):
            response = await raw_http(runner.addresses[0][1], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    finally:
        await runner.cleanup()
    assert response.status == 500 and json.loads(response.body)["code"] == "internal"
    assert b"a bug" not in response.body and "aiohttp" not in response.head
    assert refused == []
    [record] = [r for r in caplog.records if r.name == "idgate.http"]
    assert record.levelno == logging.ERROR and record.exc_info is not None and "a bug" in str(record.exc_info[1])


@pytest.mark.parametrize("trusted", [True, False])
async def test_the_grpc_listener_echoes_nothing_either(make_stack, trusted):
    stack = await make_stack(ext_authz={"grpc": {"host": HOST, "port": 0}},
                             trusted_proxies=["127.0.0.1/32"] if trusted else [])
    reader, writer = await asyncio.open_connection(HOST, stack.idgate.listeners.grpc_port)
    try:
        writer.write(PARSER_REFUSALS["space_before_colon"].encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)     # GOAWAY (or a plain close), then EOF
    finally:
        writer.close()
    assert SECRET.encode() not in answer and b"eyJ" not in answer
    assert b"aiohttp" not in answer and b"Python" not in answer and b"HTTP/1.1" not in answer


async def test_a_head_pipelined_behind_a_request_in_flight_is_bounded_too(make_stack):
    """While one request is being answered, the next head on the connection is still counted: over
    max_head_bytes, idgate reads no more, answers the first request, and closes."""
    stack = await make_stack(limits={"max_head_bytes": 16384})
    reader, writer = await asyncio.open_connection(HOST, stack.idgate.port)
    try:
        writer.write(f"GET /v1/orders/__hang/1 HTTP/1.1\r\nHost: orders.internal\r\n"
                     f"Authorization: Bearer {stack.etl_token()}\r\n\r\n".encode())
        await stack.upstream.started.wait()           # the first request is in flight
        writer.write(b"GET /v1/orders HTTP/1.1\r\nHost: orders.internal\r\n")
        for i in range(40):
            writer.write(f"X-Pad-{i}: {'p' * 1000}\r\n".encode())
        await writer.drain()
        stack.upstream.release.set()
        answer = await asyncio.wait_for(reader.read(), 5)   # the first response, then the close
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1 ") == 1
    assert refusals(stack, "main") == {"head_too_large": 1}


@pytest.mark.parametrize("expect", ["foo", "100-continue, foo", "200-ok"])
async def test_an_unknown_expect_is_an_audited_refusal_not_aiohttps_page(stack, expect):
    request = (f"POST /v1/orders HTTP/1.1\r\nHost: orders.internal\r\nExpect: {expect}\r\n"
               f"Content-Length: 2\r\nConnection: close\r\n\r\nab").encode()
    response = await raw_http(stack.idgate.port, request)
    body = assert_idgate_answer(response, 417)
    assert body["code"] == "expectation_failed" and expect.encode() not in response.body
    [record] = await stack.decisions()
    assert record["reasons"] == ["unsupported_expect"]


@pytest.mark.parametrize("port", ["port", "admin_port"])
async def test_no_response_names_the_framework(stack, port):
    """A backstop on every response either listener prepares, whoever built it."""
    for request in (b"GET /v1/orders/7 HTTP/1.1\r\nHost: orders.internal\r\nConnection: close\r\n\r\n",
                    b"GET /healthz HTTP/1.1\r\nHost: a\r\nExpect: foo\r\nConnection: close\r\n\r\n"):
        response = await raw_http(getattr(stack.idgate, port), request)
        assert "server: idgate" in response.head.lower() and "aiohttp" not in response.head.lower()


async def test_100_continue_is_sent_only_once_the_request_is_allowed(stack):
    """An unauthenticated client is never invited to send its body: its 401 comes first."""
    reader, writer = await asyncio.open_connection(HOST, stack.idgate.port)
    try:
        writer.write(b"POST /v1/orders HTTP/1.1\r\nHost: orders.internal\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 5\r\n\r\n")
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    assert first.startswith(b"HTTP/1.1 401 ")


@pytest.mark.parametrize("coding", ["gzip, chunked", "chunked, chunked", "deflate,chunked"])
async def test_only_a_plain_chunked_transfer_encoding_is_forwarded(stack, coding):
    request = (f"POST /v1/orders HTTP/1.1\r\nHost: orders.internal\r\nAuthorization: Bearer {stack.etl_token()}\r\n"
               f"Transfer-Encoding: {coding}\r\nConnection: close\r\n\r\n2\r\nab\r\n0\r\n\r\n").encode()
    response = await raw_http(stack.idgate.port, request)
    assert response.status == 400
    assert stack.upstream.received == []
