"""Main-listener behaviour: TLS, slow clients, request limits."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import ssl
import time
import warnings
from pathlib import Path

import aiohttp
import pytest
import trustme

from proxy.config import load_config
from proxy.core.errors import IdgateError
from proxy.services import running_services

from tests.harness.processes import HOST
from tests.harness.servers import write_config

REPO = Path(__file__).resolve().parents[2]


async def test_tls_listener_serves_the_proxy(make_stack, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert(HOST, "localhost")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    stack = await make_stack(listen={"host": HOST, "port": 0, "tls": {"cert_file": str(cert_file), "key_file": str(key_file)}})
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    url = f"https://{HOST}:{stack.idgate.port}/v1/orders/7"
    headers = {"Host": "orders.internal", "Authorization": f"Bearer {stack.etl_token()}"}
    async with stack.http.get(url, headers=headers, ssl=client_ctx) as response:
        assert response.status == 200
    assert stack.upstream.received[0].header("X-Forwarded-Proto") == ["https"]
    # Plain HTTP on the TLS port gets no proxied answer.
    try:
        async with stack.http.get(f"http://{HOST}:{stack.idgate.port}/v1/orders/7", headers=headers) as response:
            assert response.status >= 400
    except aiohttp.ClientError:
        pass
    assert len(stack.upstream.received) == 1


async def test_slow_request_head_is_cut_off(make_stack):
    stack = await make_stack(limits={"header_timeout": 0.5})
    reader, writer = await asyncio.open_connection(HOST, stack.idgate.port)
    started = time.monotonic()
    writer.write(b"GET /v1/orders/7 HTTP/1.1\r\nHost: orders.internal\r\n")  # head never completes
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=10)  # returns at EOF: idgate closed the socket
    elapsed = time.monotonic() - started
    writer.close()
    assert data.startswith(b"HTTP/1.1 408 ") and b'"code":"request_timeout"' in data   # told why, then closed
    assert elapsed < 5
    assert stack.upstream.received == [] and await stack.decisions() == []
    [refused] = [s for m in stack.idgate.services.metrics.http_refused.collect() for s in m.samples
                 if s.name.endswith("_total")]
    assert (refused.labels["reason"], refused.value) == ("head_timeout", 1)



@pytest.mark.parametrize("failure", ["audit_path_is_a_directory", "issuer_without_audience"])
async def test_a_failed_startup_leaves_nothing_open(tmp_path, failure):
    """Startup fails after the HTTP sessions exist (at the audit log, or at the verifier for a config
    that bypassed load_config): every session must still be closed."""
    config = load_config(write_config(tmp_path, issuer="https://issuer.test", audience="a", upstream_port=1,
                                      policies=REPO / "policies"))
    if failure == "audit_path_is_a_directory":
        config.audit.path.mkdir(parents=True)
    else:
        config = dataclasses.replace(config, issuers=(dataclasses.replace(config.issuers[0], audiences=()),))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(IdgateError):
            async with running_services(config):
                raise AssertionError("startup must fail")
        gc.collect()
    assert [str(w.message) for w in caught if "Unclosed" in str(w.message)] == []
