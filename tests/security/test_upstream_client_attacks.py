"""Attacks on the reverse proxy's upstream client (proxy.transport.http1), from a red-team review: request
heads a lenient upstream would frame twice, tiny chunks that multiply what a paused connection holds, a TLS
body cut without close_notify, and the upstream answers and client behaviours that held up."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import tracemalloc
from pathlib import Path

import pytest
import trustme

from proxy.transport import http1
from proxy.transport.http1.connection import request_head
from tests.harness.processes import HOST, eventually, steady
from tests.harness.raw_upstream import CLOSE, HANG, NO_BODY_READ, RawRequest, Step, ok, raw_stack, raw_upstream

BOUND = 10.0          # a hang detector, never a synchronization


def token(stack) -> str:
    return stack.token


async def raw_exchange(stack, data: bytes, *, abort_after: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, stack.idgate.port)
    writer.write(data)
    await writer.drain()
    if abort_after:
        await asyncio.wait_for(stack.upstream.arrived.wait(), BOUND)
        writer.transport.abort()
        return b""
    out = b""
    async with asyncio.timeout(BOUND):
        while chunk := await reader.read(65536):
            out += chunk
    writer.close()
    return out


def head_for(stack, method: str, extra: str = "") -> bytes:
    return (f"{method} /v1/orders/1 HTTP/1.1\r\nHost: orders.internal\r\nAuthorization: Bearer {stack.token}\r\n"
            f"Connection: close\r\n{extra}\r\n").encode()


# ============ FINDING 1: the client's own request-head refusal does not check field names / method ============

@pytest.mark.parametrize("method,target,headers,has_body", [
    pytest.param("POST", "/", [("Content-Length ", "5")], True, id="content-length-with-trailing-space"),
    pytest.param("POST", "/", [("Transfer-Encoding\t", "chunked")], False, id="transfer-encoding-with-tab"),
    pytest.param("GET", "/", [("X-A: b", "c")], False, id="colon-in-name"),
    pytest.param("GET", "/", [("", "x")], False, id="empty-name"),
    pytest.param("GE\tT", "/", [], False, id="tab-in-method"),
    pytest.param("GET", "/a\tb", [], False, id="tab-in-target"),
    pytest.param("GET", "", [], False, id="empty-target"),
])
def test_request_head_refuses_what_is_not_a_token_or_a_target(method, target, headers, has_body):
    # "Content-Length " escapes the length check (size 15 != 14): the head goes out with BOTH
    # `Content-Length : 5` and an added `Transfer-Encoding: chunked` - CL.TE for a lenient upstream.
    with pytest.raises(http1.InvalidRequest):
        request_head(method, target, headers, has_body)


# ============ FINDING 2: buffered body memory is bounded in body bytes, not in memory ============

async def test_tiny_chunks_do_not_multiply_what_a_paused_connection_holds():
    piece = b"2\r\nxy\r\n" * 20000
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    high_water = http1.Limits().high_water
    async with raw_upstream(lambda r: [head, *[piece] * 100, HANG]) as upstream:
        pool = http1.Pool()
        origin = pool.origin(f"http://{HOST}:{upstream.port}")
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            async with pool.request(origin, "GET", "/", [("Host", "u")], connect_timeout=2, read_timeout=5):
                # The caller reads nothing (a slow client): wait until the upstream is held back.
                await steady(lambda: upstream.written, "the upstream's writes")
                after = tracemalloc.take_snapshot()
                held = sum(stat.size_diff for stat in after.filter_traces(
                    [tracemalloc.Filter(True, "*proxy/transport/http1/*")]).compare_to(
                    before.filter_traces([tracemalloc.Filter(True, "*proxy/transport/http1/*")]), "filename"))
        finally:
            tracemalloc.stop()
            await pool.close()
    # high_water is 256 KiB of body; 2-byte chunks make it ~7 MB of bytes objects and list slots.
    assert held < 4 * high_water, f"{held / 1e6:.1f} MB held for {high_water // 1024} KiB of body"


# ============ FINDING 3 (low): a TLS close-delimited body cut without close_notify is "complete" ============

async def test_a_tls_body_cut_without_close_notify_is_not_a_complete_answer(tmp_path: Path):
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(server_ctx)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nfirst half of the stateme")
        await writer.drain()
        # An on-path attacker's FIN: TCP ends, TLS never said close_notify.
        writer.get_extra_info("socket").shutdown(socket.SHUT_WR)
        await done.wait()
        writer.transport.abort()

    server = await asyncio.start_server(serve, HOST, 0, ssl=server_ctx)
    pool = http1.Pool()
    try:
        origin = pool.origin(f"https://{HOST}:{server.sockets[0].getsockname()[1]}",
                             http1.TlsSettings(ca_file=str(tmp_path / "ca.pem")))
        with pytest.raises(http1.ConnectionClosed):
            async with asyncio.timeout(BOUND):
                async with pool.request(origin, "GET", "/", [("Host", "u")], connect_timeout=2, read_timeout=2) as a:
                    while await a.read():
                        pass
    finally:
        done.set()
        await pool.close()
        server.close()


# ================================ held up: TLS ================================

@pytest.mark.parametrize("kind", ["expired", "not-yet-valid", "self-signed-no-ca-file"])
async def test_bad_upstream_certificates_are_a_502(tmp_path, kind):
    ca = trustme.CA()
    (tmp_path / "pki").mkdir()
    ca.cert_pem.write_to_path(str(tmp_path / "pki" / "ca.pem"))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    now = datetime.datetime.now(datetime.timezone.utc)
    if kind == "expired":
        ca.issue_cert(HOST, not_before=now - datetime.timedelta(days=10),
                      not_after=now - datetime.timedelta(days=1)).configure_cert(ctx)
        route = {"tls": {"ca_file": str(tmp_path / "pki" / "ca.pem")}}
    elif kind == "not-yet-valid":
        ca.issue_cert(HOST, not_before=now + datetime.timedelta(days=1),
                      not_after=now + datetime.timedelta(days=10)).configure_cert(ctx)
        route = {"tls": {"ca_file": str(tmp_path / "pki" / "ca.pem")}}
    else:
        ca.issue_cert(HOST).configure_cert(ctx)
        route = {}
    async with raw_stack(tmp_path, lambda r: [ok(b"secret")], ssl_context=ctx, scheme="https", route=route) as stack:
        status, body = await stack.request("/v1/orders/1")
        assert status == 502 and b"secret" not in body
        assert stack.upstream.requests == []


# ================================ held up: request side ================================

async def test_an_upload_over_the_route_limit_never_completes_upstream_and_is_not_reused(tmp_path):
    route = {"max_body_bytes": 1000}
    async with raw_stack(tmp_path, lambda r: [NO_BODY_READ, HANG] if r.connection == 1 else [ok(b"fresh")],
                         route=route) as stack:
        body = b"".join(b"%x\r\n%s\r\n" % (400, b"a" * 400) for _ in range(5)) + b"0\r\n\r\n"
        out = await raw_exchange(stack, head_for(stack, "POST", "Transfer-Encoding: chunked\r\n") + body)
        assert out.startswith(b"HTTP/1.1 413")
        assert await stack.request("/v1/orders/2") == (200, b"fresh")
        assert stack.upstream.requests[-1].connection == 2


async def test_a_client_gone_mid_upload_with_a_length_never_completes_upstream(tmp_path):
    async with raw_stack(tmp_path, lambda r: [ok(b"fresh")]) as stack:
        await raw_exchange(stack, head_for(stack, "POST", "Content-Length: 100\r\n") + b"x" * 40, abort_after=True)
        await stack.idgate.settled()
        assert await stack.request("/v1/orders/2") == (200, b"fresh")
        first, second = stack.upstream.requests
        assert first.body == b"" and second.connection == 2      # never read as a complete 100-byte body


async def test_a_post_on_a_stale_connection_is_sent_once(tmp_path):
    async with raw_stack(tmp_path, lambda r: [ok(b"1")] if r.index == 1 else [NO_BODY_READ, CLOSE]) as stack:
        assert await stack.request("/v1/orders/1") == (200, b"1")
        status, _ = await stack.request("/v1/orders/2", method="POST", data=b"pay once")
        assert status == 502
        assert [r.method for r in stack.upstream.requests] == ["GET", "POST"]


# ================================ held up: answers ================================

@pytest.mark.parametrize("late", [
    pytest.param(b"HTTP/1.1 204 No Content\r\nContent-Length: 25\r\n\r\n", id="204-with-length"),
    pytest.param(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 25\r\n\r\n", id="304-with-length"),
])
async def test_a_bodyless_answer_whose_body_comes_later_never_answers_another_request(tmp_path, late):
    leaked = ok(b"LEAKED", extra="X-Leak: 1\r\n")

    def answer(request: RawRequest) -> list[Step]:
        if (request.connection, request.index) == (1, 1):
            return [late, 0.2, leaked]
        return [ok(b"fresh")]

    async with raw_stack(tmp_path, answer) as stack:
        assert (await stack.request("/v1/orders/1"))[0] in (204, 304)
        # The late bytes arrive while the connection is idle: it leaves the pool.
        await eventually(lambda: stack.upstream.written > len(late), "the late body sent")
        await eventually(lambda: stack.idgate.services.upstream.idle_count() == 0, "the spoiled connection dropped")
        assert await stack.request("/v1/orders/2") == (200, b"fresh")


@pytest.mark.parametrize("wire", [
    pytest.param(b"HTTP/1.1 200 \xff\xfe\r\nContent-Length: 2\r\n\r\nok", id="obs-text-reason"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-A: \xff\r\nContent-Length: 2\r\n\r\nok", id="obs-text-value"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", id="h2-preface"),
    pytest.param(b"HTTP/1.1 099 X\r\nContent-Length: 2\r\n\r\nok", id="status-99"),
    pytest.param(b"HTTP/1.1 600 X\r\nContent-Length: 2\r\n\r\nok", id="status-600"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", id="te-twice"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\nok\r\n0\r\n\r\n", id="negative-chunk"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", id="cl-list"),
])
async def test_odd_answers_neither_crash_nor_reuse(tmp_path, wire, caplog):
    async with raw_stack(tmp_path, lambda r: [wire] if (r.connection, r.index) == (1, 1) else [ok(b"fresh")]) as stack:
        status, _ = await stack.request("/v1/orders/1")
        assert status in (200, 502)
        assert await stack.request("/v1/orders/2") == (200, b"fresh")
        if status == 502:
            assert stack.upstream.requests[-1].connection == 2
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


async def test_a_body_that_stops_arriving_is_408_and_its_connection_not_reused(tmp_path):
    async with raw_stack(tmp_path, lambda r: [ok(b"fresh")], route={"read_timeout": 0.5}) as stack:
        reader, writer = await asyncio.open_connection(HOST, stack.idgate.port)
        writer.write(head_for(stack, "POST", "Transfer-Encoding: chunked\r\n") + b"5\r\nhello\r\n")
        await writer.drain()
        async with asyncio.timeout(BOUND):
            out = await reader.read(65536)
        writer.close()
        assert out.startswith(b"HTTP/1.1 408")
        assert await stack.request("/v1/orders/2") == (200, b"fresh")
        assert stack.upstream.requests[0].body == b"" and stack.upstream.requests[-1].connection == 2
