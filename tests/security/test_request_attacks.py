"""One named test per request-level attack on the HTTP surfaces: each shows the clear error, that the
upstream saw nothing (or saw only what idgate vouches for), and the audit record of the denial."""

from __future__ import annotations

import pytest

from tests.security.attack_cases import OVERRIDE_HEADERS, OVERSIZED_HEADER, PATH_TRICKS, SPOOFED_IDENTITY_HEADERS, PathTrick
from tests.harness.stack import Stack
from tests.harness.servers import raw_http

def raw(stack: Stack, target: str, *, token: str | None = None, extra: str = "", method: str = "GET",
        host: str = "orders.internal") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{auth}{extra}Connection: close\r\n\r\n").encode()


async def assert_refused_and_audited(stack: Stack, status: int, expected: int, reason: str) -> None:
    assert status == expected
    assert stack.upstream.received == []
    decision = (await stack.decisions())[-1]
    assert decision["decision"] == "deny" and decision["reasons"] == [reason]


@pytest.mark.parametrize("spoof", SPOOFED_IDENTITY_HEADERS)
async def test_spoofed_identity_headers_never_reach_the_upstream(stack, spoof):
    response = await raw_http(stack.idgate.port, raw(stack, "/v1/orders/7", token=stack.etl_token(), extra=spoof + "\r\n"))
    assert response.status == 200
    [received] = stack.upstream.received
    spoofed_name, spoofed_value = spoof.split(": ")
    for name, value in received.headers:
        assert value != spoofed_value, f"{name} carried the spoofed value"
    assert received.header("X-Idgate-Subject") == ["svc-etl-7"]


async def test_connection_header_cannot_remove_idgate_identity(stack):
    extra = "Connection: X-Idgate-Subject\r\n"
    response = await raw_http(stack.idgate.port, raw(stack, "/v1/orders/7", token=stack.etl_token(), extra=extra))
    assert response.status == 200
    assert stack.upstream.received[0].header("X-Idgate-Subject") == ["svc-etl-7"]


async def test_forwarded_headers_from_untrusted_peer_are_ignored(stack):
    extra = "X-Forwarded-For: 10.9.9.9\r\nX-Forwarded-Host: admin.internal\r\nForwarded: for=10.9.9.9\r\nX-Real-IP: 10.9.9.9\r\n"
    response = await raw_http(stack.idgate.port, raw(stack, "/v1/orders/7", token=stack.etl_token(), extra=extra))
    assert response.status == 200
    received = stack.upstream.received[0]
    assert received.header("X-Forwarded-For") == ["127.0.0.1"]
    assert received.header("X-Forwarded-Host") == ["orders.internal"]
    assert received.header("Forwarded") == [] and received.header("X-Real-IP") == []
    assert (await stack.decisions())[0]["client"]["addr"] == "127.0.0.1"


@pytest.mark.parametrize("spelling", ["ORDERS.INTERNAL", "orders.internal.", "Orders.Internal.:8443", "orders.internal:80"])
async def test_the_upstream_gets_the_host_that_was_decided_not_the_clients_spelling(stack, spelling):
    response = await raw_http(stack.idgate.port, raw(stack, "/v1/orders/7", token=stack.etl_token(), host=spelling))
    assert response.status == 200
    [received] = stack.upstream.received
    assert received.header("Host") == ["orders.internal"] and received.header("X-Forwarded-Host") == ["orders.internal"]
    assert (await stack.decisions())[0]["target"]["host"] == "orders.internal"


@pytest.mark.parametrize("spelling", ["orders.internal..", "orders.internal:65536", "orders..internal", "[::1"])
async def test_malformed_host_spellings_are_refused(stack, spelling):
    response = await raw_http(stack.idgate.port, raw(stack, "/v1/orders/7", token=stack.etl_token(), host=spelling))
    await assert_refused_and_audited(stack, response.status, 400, "bad_host")


@pytest.mark.parametrize("trick", PATH_TRICKS, ids=str)
async def test_path_tricks_are_normalized_or_refused(stack, trick: PathTrick):
    response = await raw_http(stack.idgate.port, raw(stack, trick.target, token=stack.etl_token()))
    await assert_refused_and_audited(stack, response.status, trick.status, trick.reason)


async def test_query_and_fragment_do_not_take_part_in_path_matching(stack):
    response = await raw_http(stack.idgate.port, raw(stack, "/v1/orders?next=/../admin", token=stack.etl_token()))
    assert response.status == 200
    assert stack.upstream.received[0].raw_path == "/v1/orders?next=/../admin"
    response = await raw_http(stack.idgate.port, raw(stack, "/v1/orders#/../admin", token=stack.etl_token()))
    assert response.status == 400


async def test_upstream_receives_exactly_the_authorized_path(stack):
    response = await raw_http(stack.idgate.port, raw(stack, "/v1/orders/./7/../8//%7Eitem", token=stack.etl_token()))
    assert response.status == 200
    assert stack.upstream.received[0].raw_path == "/v1/orders/8/~item"
    assert (await stack.decisions())[0]["target"]["path"] == "/v1/orders/8/~item"


@pytest.mark.parametrize("header", OVERRIDE_HEADERS)
async def test_method_and_url_override_headers_are_refused(stack, header):
    response = await raw_http(stack.idgate.port, raw(stack, "/v1/orders/7", token=stack.etl_token(), extra=header + "\r\n"))
    await assert_refused_and_audited(stack, response.status, 400, "override_header")


async def test_duplicate_authorization_headers_are_refused(make_stack):
    stack = await make_stack(orders_route={"forward_token": True})
    extra = "Authorization: Bearer other.token.here\r\n"
    response = await raw_http(stack.idgate.port, raw(stack, "/v1/orders/7", token=stack.etl_token(), extra=extra))
    await assert_refused_and_audited(stack, response.status, 400, "duplicate_authorization")


async def test_trusted_proxy_forwarding_headers_are_replaced_not_appended(make_stack):
    stack = await make_stack(trusted_proxies=["127.0.0.1/32"])
    extra = ("X-Forwarded-Host: admin.internal\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\n"
             "X-Forwarded-Proto: https\r\nForwarded: for=6.6.6.6\r\n")
    response = await raw_http(stack.idgate.port, raw(stack, "/v1/orders/7", token=stack.etl_token(), extra=extra))
    assert response.status == 200
    received = stack.upstream.received[0]
    assert received.header("X-Forwarded-Host") == ["orders.internal"]
    assert received.header("X-Forwarded-For") == ["6.6.6.6, 7.7.7.7, 127.0.0.1"]
    assert received.header("X-Forwarded-Proto") == ["http"]
    assert received.header("Forwarded") == []


@pytest.mark.parametrize("method,extra", [
    ("POST", "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
    ("GET", "Upgrade: websocket\r\n"),  # no Connection: upgrade, no key
])
async def test_malformed_websocket_handshake_never_reaches_the_upstream(make_stack, method, extra):
    stack = await make_stack(orders_route={"websocket": True})
    response = await raw_http(stack.idgate.port, raw(stack, "/v1/orders/ws", token=stack.etl_token(), method=method, extra=extra))
    await assert_refused_and_audited(stack, response.status, 400, "bad_websocket_handshake")


@pytest.mark.parametrize("target", ["*", "orders.internal:443"])
async def test_asterisk_and_authority_form_targets_are_refused_and_audited(stack, target):
    method = "OPTIONS" if target == "*" else "CONNECT"
    response = await raw_http(stack.idgate.port, raw(stack, target, token=stack.etl_token(), method=method))
    assert response.status in (400, 404)
    assert "aiohttp" not in response.head
    assert stack.upstream.received == []
    assert (await stack.decisions())[-1]["decision"] == "deny"


async def test_query_string_of_a_refused_request_is_not_audited(stack):
    response = await raw_http(stack.idgate.port, raw(stack, "/v1/orders/%2F?access_token=SECRET123", token=stack.etl_token()))
    assert response.status == 400
    assert "SECRET123" not in stack.idgate.services.config.audit.path.read_text()
    assert (await stack.decisions())[-1]["target"]["raw_path"] == "/v1/orders/%2F"


async def test_absolute_form_request_line_is_refused(stack):
    response = await raw_http(stack.idgate.port, raw(stack, "http://reports.internal/v1/reports/x", token=stack.etl_token()))
    await assert_refused_and_audited(stack, response.status, 400, "not_origin_form")


async def test_oversized_header_is_431(stack):
    extra = OVERSIZED_HEADER + "\r\n"
    response = await raw_http(stack.idgate.port, raw(stack, "/v1/orders/7", token=stack.etl_token(), extra=extra))
    await assert_refused_and_audited(stack, response.status, 431, "header_too_large")


async def test_oversized_body_by_chunks_is_refused_and_recorded_once(make_stack):
    stack = await make_stack(orders_route={"max_body_bytes": 1000})
    chunk = "a" * 600
    body = f"258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    request = raw(stack, "/v1/orders/7", token=stack.etl_token(), extra="Transfer-Encoding: chunked\r\n")
    response = await raw_http(stack.idgate.port, request + body.encode())
    # No Content-Length: the limit trips while streaming, the upstream request is aborted mid-body.
    assert response.status == 413
    assert stack.upstream.received == []
    # A failure after the allow is the request's outcome, not a second, contradictory decision.
    records = await stack.idgate.audit_records()
    assert [(r["event"], r.get("decision")) for r in records] == [("decision", "allow"), ("outcome", None)]
    assert records[1]["error"] == "body_too_large"


async def test_duplicate_host_headers_are_refused(stack):
    response = await raw_http(stack.idgate.port, raw(stack, "/v1/orders/7", token=stack.etl_token(), extra="Host: reports.internal\r\n"))
    assert response.status == 400
    assert stack.upstream.received == []


async def test_client_that_stops_sending_its_body_is_cut_off(make_stack):
    stack = await make_stack(orders_route={"read_timeout": 0.3})
    request = raw(stack, "/v1/orders/7", token=stack.etl_token(), extra="Content-Length: 100\r\n")
    response = await raw_http(stack.idgate.port, request + b"only ten b")  # 90 bytes never come
    assert response.status == 408
    outcome = [r for r in await stack.idgate.audit_records() if r["event"] == "outcome"][-1]
    assert outcome["error"] == "body_timeout" and outcome["status"] == 408


# After the first, well-formed chunk: the head is allowed and forwarded, then the framing goes wrong.
@pytest.mark.parametrize("rest", [
    b"zz\r\nhello\r\n0\r\n\r\n",                  # chunk size not hex
    b"XYZ\r\n",                                    # size line garbage
    b"5;ext\x00=1\r\nhello\r\n0\r\n\r\n",          # control character in an extension
    b"-5\r\nhello\r\n0\r\n\r\n",                   # negative size
    b"5\r\nhelloEXTRA\r\n0\r\n\r\n",               # chunk longer than it said
])
async def test_a_malformed_chunked_body_fails_fast_with_400(make_stack, rest):
    """A framing error after an authorized head is noticed at once, not by the idle timer: 400, the
    outcome says why, the upstream request is aborted, and nothing of the body is echoed back."""
    stack = await make_stack(orders_route={"read_timeout": 30})
    head = raw(stack, "/v1/orders/7", token=stack.etl_token(), extra="Transfer-Encoding: chunked\r\n")
    response = await raw_http(stack.idgate.port, head + b"5\r\nfirst\r\n", timeout=5,
                              then=stack.upstream.started.wait, rest=rest)
    assert response.status == 400 and response.head.count("HTTP/1.1") == 1
    assert b"hello" not in response.body and b"aiohttp" not in response.head.encode()
    assert stack.upstream.received == []       # it never got a complete request
    decision, outcome = await stack.idgate.audit_records()
    assert decision["decision"] == "allow"
    assert (outcome["event"], outcome["status"], outcome["error"]) == ("outcome", 400, "malformed_body")
    assert outcome["duration_ms"] < 5000



async def test_the_upstream_gets_the_content_length_idgate_parsed(stack):
    """idgate re-frames the body itself: an odd spelling of the length must not reach an upstream parser."""
    response = await raw_http(stack.idgate.port, raw(stack, "/v1/orders/7", token=stack.etl_token(),
                                                     extra="Content-Length: 002\r\n") + b"ab")
    assert response.status == 200
    [received] = stack.upstream.received
    assert received.header("Content-Length") == ["2"]
