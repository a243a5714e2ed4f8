"""Real nginx running the shipped deploy/nginx config, asking a real idgate's forward auth, in front of
an application that resolves the raw request path the way common servers do (RFC 3986
remove_dot_segments, where an empty segment is a segment).  nginx forwards its own copy of the target,
so idgate must decide on exactly that spelling, for exactly the host the config pins."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import jwt
import pytest
from aiohttp import web

from tests.harness.nginx import running_nginx
from tests.harness.servers import free_port, raw_http, serve_app

TRUSTED = ["127.0.0.1/32"]
_UNRESERVED_ESCAPE = re.compile(r"%(2[dDeE]|5[fF]|7[eE]|[3][0-9]|[46][1-9a-fA-F]|[57][0-9aA])")


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 as written, after decoding escapes of unreserved characters (§6.2.2.2)."""
    source = _UNRESERVED_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), path)
    output = ""
    while source:
        if source.startswith(("../", "./")):
            source = source.split("/", 1)[1]
        elif source.startswith("/./") or source == "/.":
            source = "/" + source[3:]
        elif source.startswith("/../") or source == "/..":
            source = "/" + source[4:]
            output = output[: output.rfind("/")] if "/" in output else ""
        elif source in (".", ".."):
            source = ""
        else:
            end = source.find("/", 1)
            segment, source = (source, "") if end == -1 else (source[:end], source[end:])
            output += segment
    return output


@dataclass
class ResolvingApp:
    """The application behind nginx: serves its admin area under /admin, everything else as orders."""

    received: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)   # (raw, resolved, headers)

    def app(self) -> web.Application:
        async def serve(request: web.Request) -> web.Response:
            resolved = remove_dot_segments(request.raw_path.split("?", 1)[0])
            self.received.append((request.raw_path, resolved, dict(request.headers)))
            return web.Response(text="ADMIN AREA" if resolved.startswith("/admin") else f"orders: {resolved}")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", serve)
        return app


def test_the_upstream_resolves_paths_as_rfc_3986_says():
    # RFC 3986 §5.4's own examples, plus the empty-segment cases this suite depends on.
    assert remove_dot_segments("/a/b/c/./../../g") == "/a/g"
    assert remove_dot_segments("mid/content=5/../6") == "mid/6"
    assert remove_dot_segments("/admin//../v1/orders") == "/admin/v1/orders"
    assert remove_dot_segments("/admin/x//../../v1/orders") == "/admin/v1/orders"
    assert remove_dot_segments("/admin/%2e%2e/v1") == "/v1"


@pytest.fixture
async def fronted(make_stack):
    stack = await make_stack(trusted_proxies=TRUSTED)
    application = ResolvingApp()
    async with serve_app(application.app()) as backend_port:
        with running_nginx(idgate_port=stack.idgate.port, backend_port=backend_port, listen_port=free_port()) as nginx:
            yield stack, application, nginx


def request(target: str, *, token: str | None, host: str = "orders.internal", extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{auth}{extra}Connection: close\r\n\r\n".encode()


async def test_an_allowed_request_reaches_the_application_with_a_host_bound_assertion(fronted):
    stack, application, nginx = fronted
    response = await raw_http(nginx.port, request("/v1/orders/7", token=stack.etl_token()))
    assert response.status == 200 and response.body == b"orders: /v1/orders/7"
    [(raw, _, headers)] = application.received
    assert raw == "/v1/orders/7" and headers["X-Idgate-Subject"] == "svc-etl-7"
    assert "Authorization" not in headers
    key = jwt.PyJWK(stack.idgate.services.signer.jwks()["keys"][0])
    claims = jwt.decode(headers["X-Idgate-Assertion"], key, algorithms=["ES256"], audience="forward-auth:orders.internal")
    assert claims["sub"] == "svc-etl-7"
    with pytest.raises(jwt.InvalidAudienceError):   # not a route's assertion, whatever the names
        jwt.decode(headers["X-Idgate-Assertion"], key, algorithms=["ES256"], audience="route:orders")


# Each normalizes, merging `//` first, to the allowed /v1/orders..., while the application resolves it
# to its admin area: a bypass for as long as idgate decided on its own normalization of nginx's raw target.
@pytest.mark.parametrize("target", [
    "/admin//../v1/orders",
    "/admin/x//../../v1/orders/7",
    "/admin/x/.//../../v1/orders",
    "/admin/x/%2e//../../v1/orders",
])
async def test_a_target_the_application_resolves_elsewhere_never_reaches_it(fronted, target):
    stack, application, nginx = fronted
    assert remove_dot_segments(target).startswith("/admin")   # what the application would have served
    response = await raw_http(nginx.port, request(target, token=stack.etl_token()))
    assert response.status >= 400 and b"ADMIN" not in response.body
    assert application.received == []
    [record] = await stack.decisions()
    assert record["surface"] == "forward_auth" and record["decision"] == "deny"
    assert record["reasons"] == ["non_canonical_path"] and record["target"]["raw_path"] == target


@pytest.mark.parametrize("target", ["/v1/orders/./7", "/v1/orders/8/../7", "/v1/%6Frders/7", "/v1/orders//7"])
async def test_any_target_idgate_would_rewrite_is_refused(fronted, target):
    stack, application, nginx = fronted
    response = await raw_http(nginx.port, request(target, token=stack.etl_token()))
    assert response.status >= 400
    assert application.received == []
    assert [r["reasons"] for r in await stack.decisions()] == [["non_canonical_path"]]


async def test_another_host_never_reaches_this_hosts_backend(fronted):
    """The etl identity may read reports.internal; the block pins orders.internal, so naming the reports
    host gets nowhere near the orders backend, and a reports path is judged under the orders rules."""
    stack, application, nginx = fronted
    response = await raw_http(nginx.port, request("/v1/reports/1", token=stack.etl_token(), host="reports.internal"))
    assert response.status == 421
    assert application.received == [] and await stack.decisions() == []
    response = await raw_http(nginx.port, request("/v1/reports/1", token=stack.etl_token()))
    assert response.status == 403
    assert application.received == []
    [record] = await stack.decisions()
    assert record["target"]["host"] == "orders.internal" and record["reasons"] == ["no_matching_rule"]


async def test_client_identity_headers_never_reach_the_application(fronted):
    stack, application, nginx = fronted
    spoofed = ("X-Idgate-Subject: admin\r\nX-Idgate-Rule: root\r\nX-Forwarded-User: admin\r\n"
               "X-Auth-Request-User: admin\r\nRemote-User: admin\r\nX-Idgate-Assertion: forged\r\n")
    response = await raw_http(nginx.port, request("/v1/orders/7", token=stack.etl_token(), extra=spoofed))
    assert response.status == 200
    [(_, _, headers)] = application.received
    assert headers["X-Idgate-Subject"] == "svc-etl-7" and headers["X-Idgate-Rule"] == "etl-read-orders"
    assert "admin" not in headers.values() and "forged" not in headers.values() and "root" not in headers.values()


async def test_no_token_is_a_401_from_nginx(fronted):
    stack, application, nginx = fronted
    response = await raw_http(nginx.port, request("/v1/orders/7", token=None))
    assert response.status == 401
    assert application.received == []
    assert [r["reasons"] for r in await stack.decisions()] == [["missing_token"]]
