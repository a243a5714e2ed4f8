"""The pure parts of the Envoy ext_authz surfaces: Envoy's client address, which headers an allow
removes and the CheckRequest → Received mapping (admission itself: tests/unit/edges/test_admission.py)."""

from __future__ import annotations

import pytest
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest

from proxy.edges import _ext_authz
from proxy.edges.ext_authz_grpc import _check_of
from proxy.core.errors import BadRequest


@pytest.mark.parametrize("headers,expected", [
    ([("x-envoy-external-address", "10.1.2.3"), ("x-forwarded-for", "6.6.6.6, 192.0.2.2")], "10.1.2.3"),
    ([("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "7.7.7.7, 10.0.0.9")], "10.0.0.9"),   # Envoy appended the last
    ([("x-envoy-external-address", "1.1.1.1"), ("x-envoy-external-address", "2.2.2.2"),
      ("x-forwarded-for", "10.0.0.9")], "10.0.0.9"),                                           # two claims: neither
    ([("host", "orders.internal")], None),
])
def test_envoy_client_addr(headers, expected):
    assert _ext_authz.envoy_client_addr(headers) == expected


def test_remove_lists_the_credential_and_every_client_identity_header_idgate_does_not_set():
    identity = ("x-idgate-subject", "x_idgate_subject", "x-auth-request-user", "x-idgate-tenant")
    removed = _ext_authz._remove(identity, forward_token=False)
    assert removed[0] == "authorization"
    assert {"x_idgate_subject", "x-auth-request-user", "x-idgate-tenant", "x-forwarded-user", "remote-user"} <= set(removed)
    assert "x-idgate-subject" not in removed          # idgate overwrites it instead
    assert len(removed) == len(set(removed))


def test_forward_token_keeps_authorization():
    assert "authorization" not in _ext_authz._remove((), forward_token=True)


def test_check_of_takes_envoys_fields_and_drops_pseudo_headers():
    request = CheckRequest()
    request.attributes.source.address.socket_address.address = "10.1.2.3"
    http = request.attributes.request.http
    http.method, http.host, http.path = "GET", "orders.internal", "/v1/orders?x=1"
    http.headers.update({":path": "/admin", ":authority": "evil", "authorization": "Bearer t"})
    received, original = _check_of(request, "rid-1", "127.0.0.9")
    # Before the peer is trusted: only what the peer itself is, and the fields admission checks first.
    assert (received.method, tuple(received.hosts), received.target) == ("GET", ("orders.internal",), "/v1/orders?x=1")
    assert (received.client_addr, tuple(received.headers)) == ("127.0.0.9", ())
    check = original(received)
    assert check.client_addr == "10.1.2.3"
    assert list(check.headers) == [("authorization", "Bearer t")]


def test_check_of_reads_raw_header_values_when_envoy_sends_them():
    request = CheckRequest()
    http = request.attributes.request.http
    http.method, http.host, http.path = "GET", "orders.internal", "/"
    http.header_map.headers.add(key="authorization", raw_value=b"Bearer t")
    received, original = _check_of(request, "rid", "127.0.0.9")
    assert list(original(received).headers) == [("authorization", "Bearer t")]
    http.header_map.headers.add(key="x-bin", raw_value=b"\xff")
    received, original = _check_of(request, "rid", "127.0.0.9")
    with pytest.raises(BadRequest):
        original(received)
