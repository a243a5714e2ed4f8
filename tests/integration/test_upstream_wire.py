"""What the reverse proxy puts on the upstream's wire, and takes from it, seen over raw sockets: the
request exactly as idgate decided it, bodies framed as given, answers not decoded, a slow client that
pauses the upstream instead of filling idgate, a route's connection limit, and stale connections."""

from __future__ import annotations

import asyncio
import socket

from tests.harness.processes import HOST, eventually, steady
from tests.harness.raw_upstream import CLOSE, HANG, NO_BODY_READ, RawRequest, Step, ok, raw_stack


def answer_ok(request: RawRequest) -> list[Step]:
    return [ok()]


async def test_the_upstream_gets_the_target_as_decided_and_only_idgates_headers(tmp_path):
    async with raw_stack(tmp_path, answer_ok) as stack:
        target = "/v1/orders/./a%20b//7?q=%2F..%2F&x=a+b&y=%7e&&z"
        assert (await stack.request(target, headers={"X-Custom": "kept", "User-Agent": "client/1"}))[0] == 200
        [request] = stack.upstream.requests
    assert request.target == "/v1/orders/a%20b/7?q=%2F..%2F&x=a+b&y=%7e&&z"   # path normalized, query untouched
    names = [line.split(":", 1)[0].lower() for line in request.header_lines]
    assert names.count("user-agent") == 1 and request.header("User-Agent") == ["client/1"]   # the client's, not one added
    assert "accept-encoding" in names and request.header("X-Custom") == ["kept"]
    assert request.header("Content-Length") == [] and request.header("Transfer-Encoding") == []
    assert request.header("Connection") == [] and request.header("Host") == ["orders.internal"]


async def test_a_client_that_sends_no_optional_headers_gets_none_added(tmp_path):
    async with raw_stack(tmp_path, answer_ok) as stack:
        reader, writer = await asyncio.open_connection(HOST, stack.idgate.port)
        writer.write(f"GET /v1/orders/1 HTTP/1.1\r\nHost: orders.internal\r\nAuthorization: Bearer {stack.token}\r\n"
                     f"Connection: close\r\n\r\n".encode())
        assert (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()
        [request] = stack.upstream.requests
    names = {line.split(":", 1)[0].lower() for line in request.header_lines}
    assert not names & {"user-agent", "accept", "accept-encoding", "content-type", "content-length"}


async def test_request_bodies_are_framed_as_the_client_framed_them(tmp_path):
    async def streamed():
        for part in (b"streamed ", b"upload"):
            yield part

    async with raw_stack(tmp_path, answer_ok) as stack:
        assert (await stack.request("/v1/orders/1", method="POST", data=b"exact bytes"))[0] == 200
        assert (await stack.request("/v1/orders/2", method="PUT", data=streamed()))[0] == 200
        with_length, chunked = stack.upstream.requests
    assert with_length.header("Content-Length") == ["11"] and with_length.body == b"exact bytes"
    assert chunked.header("Transfer-Encoding") == ["chunked"] and chunked.body == b"streamed upload"
    assert chunked.header("Content-Length") == []


async def test_answers_are_relayed_undecoded(tmp_path):
    gzipped = bytes.fromhex("1f8b0800000000000003cb48cdc9c90700865a1a3605000000")
    answer = (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Type: text/plain\r\n"
              b"Content-Length: %d\r\n\r\n" % len(gzipped)) + gzipped
    async with raw_stack(tmp_path, lambda r: [answer]) as stack:
        async with stack.http.get(stack.idgate.url + "/v1/orders/1", headers={
                "Host": "orders.internal", "Authorization": f"Bearer {stack.token}"}) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            assert await response.read() == gzipped


async def test_a_slow_client_pauses_the_upstream_instead_of_filling_idgate(tmp_path):
    size, piece = 96 * 1024 * 1024, b"d" * (1024 * 1024)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size
    async with raw_stack(tmp_path, lambda r: [head, *([piece] * (size // len(piece)))]) as stack:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(client, (HOST, stack.idgate.port))
        await loop.sock_sendall(client, f"GET /v1/orders/big HTTP/1.1\r\nHost: orders.internal\r\n"
                                        f"Authorization: Bearer {stack.token}\r\n\r\n".encode())
        # The client reads nothing: the upstream's writes stop, held back, not drained into idgate.
        stalled = await steady(lambda: stack.upstream.written, "the upstream's writes")
        assert stalled < 40 * 1024 * 1024, stalled   # socket buffers on both sides, not the 96 MiB body
        received = 0
        while received < size + len(head):
            data = await loop.sock_recv(client, 1024 * 1024)
            if not data:
                break
            received += len(data)
        client.close()
    assert received >= size


async def test_a_route_never_holds_more_upstream_connections_than_its_limit(tmp_path):
    route = {"max_connections": 2, "max_connections_per_identity": 8, "pool_timeout": 10}
    async with raw_stack(tmp_path, lambda r: [0.1, ok()], route=route) as stack:
        answers = await asyncio.gather(*(stack.request(f"/v1/orders/{n}") for n in range(8)))
        assert [status for status, _ in answers] == [200] * 8
        assert stack.upstream.connections <= 2
        assert stack.idgate.services.upstream.idle_count() <= 2


async def test_a_connection_the_upstream_closed_while_idle_is_not_a_502(tmp_path):
    async with raw_stack(tmp_path, lambda r: [ok(), 0.02, CLOSE]) as stack:
        assert (await stack.request("/v1/orders/1"))[0] == 200
        await eventually(lambda: stack.idgate.services.upstream.idle_count() == 0, "the idle close seen by idgate")
        assert (await stack.request("/v1/orders/2", method="POST", data=b"not replayable"))[0] == 200
        assert stack.upstream.connections == 2
        assert [o["status"] for o in await stack.outcomes()] == [200, 200]


async def test_an_upstream_that_answers_before_reading_the_body(tmp_path):
    too_large = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nnope"
    async with raw_stack(tmp_path, lambda r: [NO_BODY_READ, too_large, HANG] if r.connection == 1 else [ok()]) as stack:
        assert await stack.request("/v1/orders/1", method="POST", data=b"x" * 4_000_000) == (413, b"nope")
        assert (await stack.request("/v1/orders/2"))[0] == 200
        assert stack.upstream.requests[-1].connection == 2      # the half-sent upload's connection is gone


async def test_a_client_that_goes_away_mid_upload_never_completes_the_upstreams_request(tmp_path):
    """The chunked upload is cut where the client stopped: the upstream never sees a last chunk that
    would turn a truncated body into a complete request."""
    async with raw_stack(tmp_path, answer_ok) as stack:
        reader, writer = await asyncio.open_connection(HOST, stack.idgate.port)
        writer.write(f"POST /v1/orders/1 HTTP/1.1\r\nHost: orders.internal\r\nAuthorization: Bearer {stack.token}\r\n"
                     f"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".encode())
        await writer.drain()
        await eventually(lambda: stack.upstream.body_bytes == 5, "the first chunk upstream")
        writer.transport.abort()
        await eventually(lambda: stack.upstream.closed == 1, "the upstream connection dropped")
        [request] = stack.upstream.requests
        assert request.body == b""                   # its body never completed (it stops at "hello")
        assert stack.upstream.closed == 1            # idgate dropped the upstream connection
        assert [o["error"] for o in await stack.outcomes()] == ["client_disconnected"]


async def test_a_client_that_goes_away_mid_download_takes_the_upstream_connection_with_it(tmp_path):
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 50000000\r\n\r\n"
    async with raw_stack(tmp_path, lambda r: [head, *[b"d" * 1_000_000] * 50] if r.connection == 1 else [ok()]) as stack:
        reader, writer = await asyncio.open_connection(HOST, stack.idgate.port)
        writer.write(f"GET /v1/orders/big HTTP/1.1\r\nHost: orders.internal\r\nAuthorization: Bearer {stack.token}\r\n"
                     f"\r\n".encode())
        await reader.readexactly(100_000)
        writer.transport.abort()
        await stack.idgate.settled()
        assert [o["error"] for o in await stack.outcomes()] == ["client_disconnected"]
        assert (await stack.request("/v1/orders/2"))[0] == 200
        assert stack.upstream.requests[-1].connection == 2     # the half-read answer's connection was not reused
