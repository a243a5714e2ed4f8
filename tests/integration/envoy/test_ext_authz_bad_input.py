"""idgate's ext_authz surfaces asked directly, with what Envoy would never send: malformed gRPC messages,
check requests without :path or without HTTP attributes, oversized header maps, untrusted callers.
Each is a clear, audited denial: never an allow, never an exception trace."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from tests.harness.processes import HOST
from tests.harness.servers import RunningIdgate, local_issuer, raw_http, running_idgate, write_config
from tests.harness.stack import example_policies

CHECK = "/envoy.service.auth.v3.Authorization/Check"


class Direct:
    def __init__(self, idgate: RunningIdgate, channel: grpc.aio.Channel, token: str) -> None:
        self.idgate = idgate
        self.token = token
        self._check = channel.unary_unary(CHECK)   # bytes in, bytes out: malformed messages can be sent

    async def check_bytes(self, raw: bytes) -> CheckResponse:
        return CheckResponse.FromString(await self._check(raw, timeout=10))

    async def check(self, request: CheckRequest) -> CheckResponse:
        return await self.check_bytes(request.SerializeToString())

    async def decisions(self) -> list[dict[str, Any]]:
        return [r for r in await self.idgate.audit_records() if r["event"] == "decision"]


def check_request(token: str | None, *, path: str = "/v1/orders/7", headers: dict[str, str] | None = None) -> CheckRequest:
    request = CheckRequest()
    request.attributes.source.address.socket_address.address = "10.1.2.3"
    http = request.attributes.request.http
    http.method, http.host, http.path, http.id = "GET", "orders.internal", path, "req-0123456789"
    if token:
        http.headers["authorization"] = f"Bearer {token}"
    http.headers.update(headers or {})
    return request


@pytest.fixture
async def make_direct(tmp_path: Path):
    async def factory(**config: Any) -> Direct:
        issuer = await exits.enter_async_context(local_issuer("orders-api"))
        config.setdefault("trusted_proxies", [f"{HOST}/32"])
        config.setdefault("ext_authz", {"http": {}, "grpc": {"host": HOST, "port": 0, "max_message_bytes": 65536}})
        path = write_config(tmp_path, issuer=issuer.issuer.issuer_url, audience="orders-api", upstream_port=9,
                            policies=example_policies(tmp_path, issuer.issuer.issuer_url), **config)
        idgate = await exits.enter_async_context(running_idgate(path))
        channel = await exits.enter_async_context(grpc.aio.insecure_channel(f"{HOST}:{idgate.listeners.grpc_port}"))
        return Direct(idgate, channel, issuer.token("svc-etl-7", ("data-eng",), tenant="acme"))

    async with AsyncExitStack() as exits:
        yield factory


@pytest.fixture
async def direct(make_direct) -> AsyncIterator[Direct]:
    yield await make_direct()


def denied(response: CheckResponse) -> int:
    assert response.status.code != 0 and response.HasField("denied_response")
    assert not response.HasField("ok_response")
    return response.denied_response.status.code


async def test_a_well_formed_check_is_allowed(direct):
    response = await direct.check(check_request(direct.token))
    assert response.status.code == 0 and response.HasField("ok_response")
    headers = {h.header.key: h.header.value for h in response.ok_response.headers}
    assert headers["x-idgate-subject"] == "svc-etl-7"
    assert all(h.append_action == h.OVERWRITE_IF_EXISTS_OR_ADD for h in response.ok_response.headers)
    assert "authorization" in response.ok_response.headers_to_remove
    assert response.dynamic_metadata["rule"] == "etl-read-orders"
    assert response.dynamic_metadata["subject"] == "svc-etl-7"
    [decision] = await direct.decisions()
    assert decision["client"]["addr"] == "10.1.2.3" and decision["request_id"] == "req-0123456789"


@pytest.mark.parametrize("raw", [b"\xff\xff\xff", b"\x0a\x05abc", b"garbage that is not protobuf \x00\x01"])
async def test_malformed_message_is_a_clear_denial(direct, raw, caplog):
    caplog.set_level(logging.DEBUG)
    response = await direct.check_bytes(raw)
    assert denied(response) == 400
    assert b'"code":"bad_request"' in response.denied_response.body.encode()
    [decision] = await direct.decisions()
    assert decision["reasons"] == ["malformed_check"]
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_empty_message_has_no_http_attributes(direct):
    response = await direct.check_bytes(b"")
    assert denied(response) == 400
    assert (await direct.decisions())[0]["reasons"] == ["not_http_check"]


async def test_non_http_attributes_are_a_denial(direct):
    request = CheckRequest()
    request.attributes.source.address.socket_address.address = "10.1.2.3"
    request.attributes.destination.address.socket_address.address = "10.0.0.1"   # what a network filter sends
    assert denied(await direct.check(request)) == 400
    assert (await direct.decisions())[0]["reasons"] == ["not_http_check"]


async def test_check_without_path_is_a_denial(direct):
    request = check_request(direct.token)
    request.attributes.request.http.path = ""
    assert denied(await direct.check(request)) == 400
    assert (await direct.decisions())[0]["reasons"] == ["missing_path"]


async def test_check_without_method_or_host_is_a_denial(direct):
    request = check_request(direct.token)
    request.attributes.request.http.host = ""
    assert denied(await direct.check(request)) == 400
    assert (await direct.decisions())[0]["reasons"] == ["missing_attributes"]


@pytest.mark.parametrize("path,reason", [("v1/orders", "not_origin_form"), ("/v1/orders/%2F..", "encoded_slash"),
                                         ("/v1/orders/7#frag", "fragment")])
async def test_bad_paths_in_a_check_are_denials(direct, path, reason):
    assert denied(await direct.check(check_request(direct.token, path=path))) == 400
    assert (await direct.decisions())[0]["reasons"] == [reason]


async def test_too_many_headers_is_431(direct):
    request = check_request(direct.token, headers={f"x-h{i}": "v" for i in range(150)})
    assert denied(await direct.check(request)) == 431
    assert (await direct.decisions())[0]["reasons"] == ["too_many_headers"]


async def test_a_huge_header_is_431(direct):
    request = check_request(direct.token, headers={"x-big": "a" * 20000})
    assert denied(await direct.check(request)) == 431
    assert (await direct.decisions())[0]["reasons"] == ["header_too_large"]


async def test_a_message_over_the_size_cap_is_refused_unread(direct):
    request = check_request(direct.token, headers={f"x-h{i}": "a" * 1000 for i in range(80)})   # > 64 KiB
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await direct.check(request)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED    # Envoy then fails closed
    assert await direct.decisions() == []


async def test_missing_token_denial_carries_www_authenticate(direct):
    response = await direct.check(check_request(None))
    assert denied(response) == 401 and response.status.code == 16     # UNAUTHENTICATED
    headers = {h.header.key.lower(): h.header.value for h in response.denied_response.headers}
    assert headers["www-authenticate"] == 'Bearer realm="idgate", error="invalid_request"'
    assert headers["content-type"].startswith("application/json")
    assert response.dynamic_metadata["reason"] == "missing_token"


async def test_policy_denial_is_403(direct):
    response = await direct.check(check_request(direct.token, path="/admin/users"))
    assert denied(response) == 403 and response.status.code == 7       # PERMISSION_DENIED


async def test_untrusted_caller_is_refused_at_connect(make_direct):
    # Closed before any HTTP/2 (proxy.transport.h2.server): no request was made, so there is no decision to audit.
    direct = await make_direct(trusted_proxies=[])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await direct.check(check_request(direct.token))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await direct.decisions() == []
    metrics = direct.idgate.services.metrics
    assert metrics.registry.get_sample_value("idgate_grpc_refused_total", {"reason": "untrusted_peer"}) >= 1


async def test_http_surface_refuses_untrusted_callers(make_direct):
    direct = await make_direct(trusted_proxies=[])
    request = (f"GET /.idgate/ext_authz/v1/orders/7 HTTP/1.1\r\nHost: orders.internal\r\n"
               f"Authorization: Bearer {direct.token}\r\nConnection: close\r\n\r\n").encode()
    response = await raw_http(direct.idgate.port, request)
    assert response.status == 403
    [decision] = await direct.decisions()
    assert decision["reasons"] == ["untrusted_peer"] and decision["surface"] == "ext_authz_http"


@pytest.mark.parametrize("target,status,reason", [
    ("/.idgate/ext_authz", 400, "not_origin_form"),                  # no original path at all
    ("/.idgate/ext_authzv1/orders", 400, "not_origin_form"),         # prefix not followed by '/'
    ("/.idgate/ext_authz/v1/orders/7?x=1", 200, None),
])
async def test_http_surface_needs_prefix_plus_an_absolute_path(direct, target, status, reason):
    request = (f"GET {target} HTTP/1.1\r\nHost: orders.internal\r\n"
               f"Authorization: Bearer {direct.token}\r\nConnection: close\r\n\r\n").encode()
    response = await raw_http(direct.idgate.port, request)
    assert response.status == status
    [decision] = await direct.decisions()
    assert decision["surface"] == "ext_authz_http"
    if reason:
        assert decision["reasons"] == [reason]
    else:
        assert "x-envoy-auth-headers-to-remove: authorization" in response.head.lower()


async def test_audit_down_means_503_not_an_allow(direct):
    await direct.idgate.services.audit.close()
    response = await direct.check(check_request(direct.token))
    assert denied(response) == 503 and response.status.code == 14      # UNAVAILABLE


async def test_the_largest_check_a_trusted_caller_can_send_adds_at_most_2kb_to_the_audit(direct):
    """Attack class 4 on the gRPC surface: method, host, path and client address of a check are Envoy's
    copies of what the client sent; each is capped, so one refusal stays within 2 KB of audit."""
    huge = "\U0001f600" * 4000                                   # 16 KB on the wire, 48 KB as JSON escapes
    request = check_request(None, path="/" + huge)
    request.attributes.request.http.method = huge
    request.attributes.request.http.host = huge
    request.attributes.source.address.socket_address.address = "a" * 8000
    audit = direct.idgate.services.config.audit.path
    await direct.idgate.settled()
    before = audit.stat().st_size
    assert denied(await direct.check(request)) == 400
    await direct.idgate.settled()
    added = audit.read_bytes()[before:]
    assert added.count(b"\n") == 1 and len(added) <= 2048, f"{len(added)} audit bytes for one refusal"
    [record] = await direct.decisions()
    assert record["reasons"] == ["bad_method"] and record["identity"] is None
    for value in (record["target"]["method"], record["target"]["host"], record["target"]["raw_path"],
                  record["client"]["addr"]):
        assert isinstance(value, dict) and value["capped"] is True and value["chars"] >= 4000
