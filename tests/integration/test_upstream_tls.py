"""https:// upstreams: verified with the system CAs or the route's CA bundle, a client certificate for
upstreams that require mTLS, and the name verified (and sent as SNI) when it is not the URL's host.
A verification failure, or an upstream refusing idgate's certificate, is a 502 that nothing reached."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from tests.harness.processes import HOST
from tests.harness.raw_upstream import ok, raw_stack


class Pki:
    """A CA for upstream servers, one for clients, and the files a route names."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "pki"
        self.dir.mkdir()
        self.server_ca, self.client_ca, self.other_ca = trustme.CA(), trustme.CA(), trustme.CA()
        self.server_ca.cert_pem.write_to_path(str(self.dir / "upstream-ca.pem"))
        self.other_ca.cert_pem.write_to_path(str(self.dir / "other-ca.pem"))
        client = self.client_ca.issue_cert("idgate.internal")
        client.cert_chain_pems[0].write_to_path(str(self.dir / "client.pem"))
        client.private_key_pem.write_to_path(str(self.dir / "client-key.pem"))

    def file(self, name: str) -> str:
        return str(self.dir / name)

    def server_context(self, *names: str, require_client_cert: bool = False,
                       seen_names: list[str | None] | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_ca.issue_cert(*(names or (HOST,))).configure_cert(context)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            self.client_ca.configure_trust(context)
        if seen_names is not None:
            context.sni_callback = lambda sslobj, name, ctx: seen_names.append(name)  # type: ignore[assignment,misc]
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def answer(request):
    return [ok(b"over tls")]


async def test_an_https_upstream_is_verified_with_the_routes_ca_bundle(tmp_path, pki):
    route = {"tls": {"ca_file": pki.file("upstream-ca.pem")}}
    async with raw_stack(tmp_path, answer, ssl_context=pki.server_context(), scheme="https", route=route) as stack:
        assert await stack.request("/v1/orders/1") == (200, b"over tls")
        assert await stack.request("/v1/orders/2") == (200, b"over tls")
        assert stack.upstream.connections == 1          # kept alive over TLS too


@pytest.mark.parametrize("bundle", [None, "other-ca.pem"], ids=["system-cas", "another-ca-bundle"])
async def test_an_upstream_its_ca_bundle_does_not_vouch_for_is_a_502(tmp_path, pki, bundle):
    route = {"tls": {"ca_file": pki.file(bundle)}} if bundle else {}
    async with raw_stack(tmp_path, answer, ssl_context=pki.server_context(), scheme="https", route=route) as stack:
        status, body = await stack.request("/v1/orders/1")
        assert status == 502 and isinstance(body, bytes) and b"over tls" not in body
        assert stack.upstream.requests == []
        assert [(o["status"], o["error"]) for o in await stack.outcomes()] == [(502, "upstream_failed")]


async def test_a_client_certificate_is_presented_to_an_upstream_that_requires_one(tmp_path, pki):
    route = {"tls": {"ca_file": pki.file("upstream-ca.pem"), "cert_file": pki.file("client.pem"),
                     "key_file": pki.file("client-key.pem")}}
    context = pki.server_context(require_client_cert=True)
    async with raw_stack(tmp_path, answer, ssl_context=context, scheme="https", route=route) as stack:
        assert await stack.request("/v1/orders/1") == (200, b"over tls")
        [cert] = stack.upstream.peer_certs
        assert ("DNS", "idgate.internal") in cert["subjectAltName"]


async def test_without_a_client_certificate_an_mtls_upstream_refuses_and_it_is_a_502(tmp_path, pki):
    route = {"tls": {"ca_file": pki.file("upstream-ca.pem")}}
    context = pki.server_context(require_client_cert=True)
    async with raw_stack(tmp_path, answer, ssl_context=context, scheme="https", route=route) as stack:
        status, _ = await stack.request("/v1/orders/1")
        assert status == 502
        assert stack.upstream.requests == []
        assert [(o["status"], o["error"]) for o in await stack.outcomes()] == [(502, "upstream_failed")]


async def test_server_name_is_the_name_verified_and_sent(tmp_path, pki):
    seen: list[str | None] = []
    context = pki.server_context("orders.upstream.internal", seen_names=seen)
    named = {"tls": {"ca_file": pki.file("upstream-ca.pem"), "server_name": "orders.upstream.internal"}}
    async with raw_stack(tmp_path, answer, ssl_context=context, scheme="https", route=named) as stack:
        assert await stack.request("/v1/orders/1") == (200, b"over tls")
    assert seen == ["orders.upstream.internal"]
    # The same certificate does not name the address the URL has: without server_name, refused.
    unnamed = {"tls": {"ca_file": pki.file("upstream-ca.pem")}}
    async with raw_stack(tmp_path / "2", answer, ssl_context=context, scheme="https", route=unnamed) as stack:
        assert (await stack.request("/v1/orders/1"))[0] == 502


async def test_a_websocket_relay_uses_the_routes_tls_settings(make_stack, pki):
    """The WebSocket relay (aiohttp's client) verifies with the same CA bundle and presents the same certificate."""
    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            await socket.send_str("tls:" + message.data)
        return socket

    app = web.Application()
    app.router.add_get("/{tail:.*}", ws)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, ssl_context=pki.server_context(require_client_cert=True))
    await site.start()
    try:
        port = runner.addresses[0][1]
        stack = await make_stack(extra_routes=[{
            "name": "secure-ws", "upstream": f"https://{HOST}:{port}", "hosts": ["orders.internal"],
            "path_prefix": "/v1/orders/secure", "websocket": True,
            "tls": {"ca_file": pki.file("upstream-ca.pem"), "cert_file": pki.file("client.pem"),
                    "key_file": pki.file("client-key.pem")}}])
        async with stack.http.ws_connect(stack.idgate.url + "/v1/orders/secure/stream", headers={
                "Host": "orders.internal", "Authorization": f"Bearer {stack.etl_token()}"}) as socket:
            await socket.send_str("hello")
            assert (await socket.receive(timeout=5)).data == "tls:hello"
    finally:
        await runner.cleanup()
