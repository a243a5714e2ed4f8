"""The one admission step (proxy.edges._admission.check) as every surface uses it: each refusal with its
reason, for every surface's gate, and the AccessRequest it builds."""

from __future__ import annotations


import pytest

from proxy.config import LimitsConfig
from proxy.core.errors import AuthenticationError, BadRequest, HeadersTooLarge, IdgateError
from proxy.edges import credentials, ext_authz_grpc, ext_authz_http, forward_auth, reverse_proxy
from proxy.edges._admission import Admitted, Gate, Received, check

JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
GATES = {edge.SURFACE.value: edge.GATE for edge in (reverse_proxy, forward_auth, ext_authz_http, ext_authz_grpc,
                                                     credentials)}
BASE = Received(request_id="rid-1", peer="127.0.0.1", client_addr="127.0.0.1", method="GET",
                hosts=("orders.internal",), target="/v1/orders/7?x=1",
                headers=(("Host", "orders.internal"), ("Authorization", f"Bearer {JWT}")))


def admitted(gate: Gate, **changes: object) -> Admitted:
    return check(gate, BASE._replace(**changes), LimitsConfig())


def refusal(gate: Gate, **changes: object) -> IdgateError:
    with pytest.raises(IdgateError) as caught:
        admitted(gate, **changes)
    return caught.value


every_gate = pytest.mark.parametrize("gate", GATES.values(), ids=GATES.keys())


@every_gate
def test_a_plain_request_is_admitted(gate):
    result = admitted(gate)
    access = result.access
    assert (access.surface, access.method, access.host, access.path) == (gate.surface, "GET", "orders.internal", "/v1/orders/7")
    assert (result.token, result.raw_path, result.query) == (JWT, "/v1/orders/7", "x=1")


@every_gate
@pytest.mark.parametrize("header", ["X-HTTP-Method-Override", "x_http_method", "X-Method-Override", "X-Original-URL",
                                    "x-rewrite-url"])
def test_override_headers_are_refused_on_every_surface(gate, header):
    err = refusal(gate, headers=(*BASE.headers, (header, "DELETE")))
    assert (err.status, err.reason) == (400, "override_header")


@every_gate
@pytest.mark.parametrize("second", [f"Bearer {JWT}", "Bearer other.token.here", JWT, ""])
def test_a_second_authorization_is_refused_on_every_surface(gate, second):
    err = refusal(gate, headers=(*BASE.headers, ("authorization", second)))
    assert (err.status, err.reason) == (400, "duplicate_authorization")


@every_gate
def test_head_limits_on_every_surface(gate):
    err = refusal(gate, headers=tuple((f"x-{i}", "v") for i in range(101)))
    assert isinstance(err, HeadersTooLarge) and err.reason == "too_many_headers"
    err = refusal(gate, headers=(("x-big", "a" * 16384),))
    assert isinstance(err, HeadersTooLarge) and err.reason == "header_too_large"


@every_gate
@pytest.mark.parametrize("method", ["get", "Get", "GET ", "G\tT", "", "A" * 17, "GÉT"])
def test_methods_that_are_not_tokens_are_refused_on_every_surface(gate, method):
    assert refusal(gate, method=method).reason == "bad_method"


def test_the_credentials_surface_answers_get_only():
    for method in ("POST", "PUT", "HEAD", "DELETE"):
        assert refusal(credentials.GATE, method=method).reason == "method_not_allowed"


@every_gate
@pytest.mark.parametrize("hosts", [(), ("orders.internal", "orders.internal"), ("orders.internal", "evil.example")])
def test_exactly_one_host_on_every_surface(gate, hosts):
    assert refusal(gate, hosts=hosts).reason == "bad_host"


@every_gate
@pytest.mark.parametrize("host", ["orders internal", "orders.internal:99999", "orders.internal/x", "user@orders.internal",
                                  "", "[::1", "orders.internal\x00"])
def test_malformed_hosts_are_refused_on_every_surface(gate, host):
    assert refusal(gate, hosts=(host,)).reason == "bad_host"


@every_gate
@pytest.mark.parametrize("spelling", ["ORDERS.internal", "orders.internal.", "orders.internal:8080", " orders.internal"])
def test_the_host_is_decided_in_its_canonical_form(gate, spelling):
    assert admitted(gate, hosts=(spelling,)).access.host == "orders.internal"


NON_CANONICAL = ["/v1/orders/./7", "/v1/orders//7", "/v1/orders/8/../7", "/v1/%6Frders/7", "/v1/orders/7/.",
                 "/v1/orders//../orders/7", "/v1/orders/%7e"]


@pytest.mark.parametrize("target", NON_CANONICAL)
def test_a_peer_forwarded_target_must_be_canonical(target):
    for gate in (forward_auth.GATE, ext_authz_http.GATE, ext_authz_grpc.GATE):
        err = refusal(gate, target=target)
        assert (err.status, err.reason) == (400, "non_canonical_path"), gate.surface


@pytest.mark.parametrize("target", NON_CANONICAL)
def test_the_reverse_proxy_decides_on_the_path_it_forwards(target):
    result = admitted(reverse_proxy.GATE, target=target)
    assert result.access.path != result.raw_path      # it sends access.path, never the raw spelling


@every_gate
@pytest.mark.parametrize("target, reason", [("/v1/orders%2F..%2Fadmin", "encoded_slash"), ("/../x", "path_traversal"),
                                            ("http://other/x", "not_origin_form"), ("*", "not_origin_form"),
                                            ("/a#frag", "fragment"), ("/a;x", "path_params")])
def test_path_refusals_on_every_surface(gate, target, reason):
    assert refusal(gate, target=target).reason == reason


def test_the_container_token_is_accepted_raw_or_bearer():
    assert admitted(credentials.GATE, headers=(("Authorization", JWT),)).token == JWT
    assert admitted(credentials.GATE).token == JWT
    assert admitted(credentials.GATE, headers=()).token is None


@pytest.mark.parametrize("value, error", [
    ("Basic dXNlcjpwYXNz", AuthenticationError), (JWT + "\x00", BadRequest), ('{"json": true}', BadRequest),
    ("a<b>c", BadRequest),
])
def test_malformed_container_tokens(value, error):
    with pytest.raises(error):
        admitted(credentials.GATE, headers=(("Authorization", value),))


@pytest.mark.parametrize("gate", [g for g in GATES.values() if g is not credentials.GATE], ids=str)
def test_other_surfaces_take_bearer_tokens_only(gate):
    assert refusal(gate, headers=(("Authorization", JWT),)).reason == "unsupported_scheme"


def test_client_sent_identity_headers_are_named_for_removal():
    headers = (("X-Idgate-Subject", "evil"), ("x_idgate_subject", "evil"), ("X-Auth-Request-User", "evil"),
               ("X-Forwarded-User", "evil"), ("accept", "*/*"))
    assert admitted(ext_authz_http.GATE, headers=headers).identity_headers == (
        "x-idgate-subject", "x_idgate_subject", "x-auth-request-user", "x-forwarded-user")
