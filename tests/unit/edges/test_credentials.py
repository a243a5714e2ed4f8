"""The container-credentials edge's own checks, before the pipeline: how the role is read,
and plain http served to loopback peers only (a peer address the integration tests cannot have)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from proxy.config import Config, ListenerConfig, TlsConfig
from proxy.edges import credentials
from proxy.edges._http import REQUEST_ID
from proxy.core.errors import AccessDenied, BadRequest, DependencyError
from proxy.services import SERVICES
from proxy.tracing import NO_TRACING

JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"


def request_with(path: str, *, peer: str = "127.0.0.1", tls: bool = False, method: str = "GET") -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (peer, 40000) if name == "peername" else default
    listen = ListenerConfig(host="0.0.0.0", port=8080,
                            tls=TlsConfig(Path("c.pem"), Path("k.pem")) if tls else None)
    config = replace(Config(source=Path("idgate.yaml"), issuers=(), policies_dir=Path(".")), listen=listen)
    app = web.Application()
    app[SERVICES] = SimpleNamespace(config=config, broker=None, tracing=NO_TRACING)  # type: ignore[misc]
    request = make_mocked_request(method, path, headers={"Host": "127.0.0.1", "Authorization": JWT},
                                  app=app, transport=transport)
    request[REQUEST_ID] = "test"
    return request


async def test_plain_http_is_refused_to_a_non_loopback_peer() -> None:
    with pytest.raises(AccessDenied) as caught:
        await credentials.handle(request_with("/.idgate/credentials", peer="10.1.2.3"))
    assert caught.value.reason == "insecure_transport"


@pytest.mark.parametrize(("peer", "tls"), [("127.0.0.1", False), ("::1", False), ("10.1.2.3", True)])
async def test_loopback_or_tls_passes_the_transport_check(peer: str, tls: bool) -> None:
    # The next check is the broker itself, absent here: reaching it means the transport was accepted.
    with pytest.raises(DependencyError) as caught:
        await credentials.handle(request_with("/.idgate/credentials", peer=peer, tls=tls))
    assert caught.value.reason == "broker_unavailable"


@pytest.mark.parametrize(("query", "expected"), [
    ("", None), ("?role=etl", "etl"), ("?role=arn:aws:iam::123456789012:role/team/etl",
                                       "arn:aws:iam::123456789012:role/team/etl"),
])
def test_role_parameter(query: str, expected: str | None) -> None:
    assert credentials.requested_role(request_with("/.idgate/credentials" + query)) == expected


@pytest.mark.parametrize("query", ["?role=etl&role=x", "?role=", "?role=a%20b", "?role=%0a", "?other=1",
                                   "?role=" + "x" * 601])
def test_bad_role_parameter(query: str) -> None:
    with pytest.raises(BadRequest):
        credentials.requested_role(request_with("/.idgate/credentials" + query))
