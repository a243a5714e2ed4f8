"""Real nginx and real Traefik, each running its shipped deploy/ config, asking a real idgate's forward
auth, in front of an application that resolves the raw request path the way common servers do.  The
fronting proxy forwards its own copy of the request, so idgate must decide on exactly what the
application will resolve, for exactly the host the config pins, and nothing a client says about
identity may reach the application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import jwt
import pytest

from tests.harness.nginx import running_nginx
from tests.harness.resolving_app import ResolvingApp, remove_dot_segments
from tests.harness.servers import free_port, raw_http, serve_app
from tests.harness.stack import Stack
from tests.harness.traefik import running_traefik


@dataclass
class Fronted:
    stack: Stack
    application: ResolvingApp
    port: int
    other_host_status: int        # what the proxy answers for a host no block or router pins

    async def send(self, target: str, *, token: str | None = "etl", host: str = "orders.internal", extra: str = ""):
        token = self.stack.etl_token() if token == "etl" else token
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        return await raw_http(self.port, f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{auth}{extra}"
                                         "Connection: close\r\n\r\n".encode())


@pytest.fixture(params=["nginx", "traefik"])
async def fronted(request, make_stack) -> AsyncIterator[Fronted]:
    stack = await make_stack(trusted_proxies=["127.0.0.1/32"])
    application = ResolvingApp()
    async with serve_app(application.app()) as backend:
        if request.param == "nginx":
            with running_nginx(idgate_port=stack.idgate.port, backend_port=backend, listen_port=free_port()) as nginx:
                yield Fronted(stack, application, nginx.port, 421)
        else:
            with running_traefik(idgate_port=stack.idgate.port, backend_port=backend, listen_port=free_port(),
                                 api_port=free_port()) as traefik:
                yield Fronted(stack, application, traefik.port, 404)


def test_the_application_resolves_paths_as_rfc_3986_says():
    # RFC 3986 §5.4's own examples, plus the empty-segment cases this suite depends on.
    assert remove_dot_segments("/a/b/c/./../../g") == "/a/g"
    assert remove_dot_segments("mid/content=5/../6") == "mid/6"
    assert remove_dot_segments("/admin//../v1/orders") == "/admin/v1/orders"
    assert remove_dot_segments("/admin/x//../../v1/orders") == "/admin/v1/orders"
    assert remove_dot_segments("/admin/%2e%2e/v1") == "/v1"


async def test_an_allowed_request_reaches_the_application_with_a_host_bound_assertion(fronted):
    response = await fronted.send("/v1/orders/7")
    assert response.status == 200 and response.body == b"orders: /v1/orders/7"
    [received] = fronted.application.received
    assert received.raw_path == "/v1/orders/7" and received.headers["X-Idgate-Subject"] == "svc-etl-7"
    assert "Authorization" not in received.headers
    key = jwt.PyJWK(fronted.stack.idgate.services.signer.jwks()["keys"][0])
    assertion = received.headers["X-Idgate-Assertion"]
    assert jwt.decode(assertion, key, algorithms=["ES256"], audience="forward-auth:orders.internal")["sub"] == "svc-etl-7"
    with pytest.raises(jwt.InvalidAudienceError):   # never a route's assertion, whatever the names
        jwt.decode(assertion, key, algorithms=["ES256"], audience="route:orders")


# Each normalizes, when `//` is merged first, to the allowed /v1/orders..., while an application that
# resolves the raw path serves its admin area: a bypass for as long as idgate decided on its own
# normalization of the fronting proxy's raw target.  Plus spellings idgate would merely rewrite.
TARGETS = ["/admin//../v1/orders", "/admin/x//../../v1/orders/7", "/admin/x/.//../../v1/orders",
           "/admin/x/%2e//../../v1/orders", "/v1/orders/./7", "/v1/orders/8/../7", "/v1/%6Frders/7", "/v1/orders//7"]


@pytest.mark.parametrize("target", TARGETS)
async def test_idgate_decides_on_exactly_what_the_application_resolves(fronted, target):
    """nginx forwards the raw target (idgate refuses it: not canonical); Traefik cleans the path and
    forwards the clean one to both (idgate decides on that).  Either way: no admin area, and every
    request the application resolved has an allow for that very path."""
    response = await fronted.send(target)
    assert b"ADMIN" not in response.body
    allowed = {r["target"]["path"] for r in await fronted.stack.decisions() if r["decision"] == "allow"}
    assert {r.resolved for r in fronted.application.received} <= allowed
    if not fronted.application.received:
        [record] = await fronted.stack.decisions()
        assert record["reasons"] == ["non_canonical_path"] and record["target"]["raw_path"] == target


async def test_another_host_never_reaches_this_hosts_backend(fronted):
    """The etl identity may read reports.internal; the config pins orders.internal, so naming the reports
    host gets nowhere near the orders backend, and a reports path is judged under the orders rules."""
    response = await fronted.send("/v1/reports/1", host="reports.internal")
    assert response.status == fronted.other_host_status
    assert fronted.application.received == [] and await fronted.stack.decisions() == []
    response = await fronted.send("/v1/reports/1")
    assert response.status == 403
    assert fronted.application.received == []
    [record] = await fronted.stack.decisions()
    assert record["target"]["host"] == "orders.internal" and record["reasons"] == ["no_matching_rule"]


@pytest.mark.parametrize("spelling", ["ORDERS.internal", "orders.internal.", "orders.internal:443"])
async def test_host_spellings_are_decided_as_the_pinned_host(fronted, spelling):
    response = await fronted.send("/v1/orders/7", host=spelling)
    if response.status == 200:   # a proxy that routes this spelling to the block asked idgate for that host
        [record] = await fronted.stack.decisions()
        assert record["target"]["host"] == "orders.internal"
    else:
        assert fronted.application.received == []


async def test_client_identity_headers_never_reach_the_application(fronted):
    spoofed = ("X-Idgate-Subject: admin\r\nX-Idgate-Rule: root\r\nX-Forwarded-User: admin\r\n"
               "X-Auth-Request-User: admin\r\nRemote-User: admin\r\nX-Idgate-Assertion: forged\r\n")
    response = await fronted.send("/v1/orders/7", extra=spoofed)
    assert response.status == 200
    [received] = fronted.application.received
    assert received.headers["X-Idgate-Subject"] == "svc-etl-7" and received.headers["X-Idgate-Rule"] == "etl-read-orders"
    assert not {"admin", "forged", "root"} & set(received.headers.values())


async def test_a_method_override_is_refused_before_it_reaches_the_application(fronted):
    response = await fronted.send("/v1/orders/7", extra="X-HTTP-Method-Override: DELETE\r\n")
    assert response.status >= 400
    assert fronted.application.received == []
    assert [r["reasons"] for r in await fronted.stack.decisions()] == [["override_header"]]


async def test_no_token_is_a_401(fronted):
    response = await fronted.send("/v1/orders/7", token=None)
    assert response.status == 401
    assert fronted.application.received == []
    assert [r["reasons"] for r in await fronted.stack.decisions()] == [["missing_token"]]
