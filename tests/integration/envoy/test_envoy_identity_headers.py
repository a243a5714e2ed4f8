"""Client-sent identity headers never reach the application through the shipped Envoy configs, on any
route (DESIGN §6), in both ext_authz modes: on /healthz, which skips ext_authz, as on an allowed route,
where idgate's own X-Idgate-* headers (and nothing else about the request) still arrive.  Envoy itself
removes them, so this holds whatever idgate answers; underscore spellings Envoy refuses outright."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.harness.envoy import MODES, http_connection_manager, load_deploy_config
from tests.harness.servers import Received, raw_http
from tests.integration.envoy.conftest import EnvoyStack
from tests.security.attack_cases import SPOOFED_IDENTITY_HEADERS

# Set afresh for every request (a new id, a new signed assertion): compared by presence, not value.
PER_REQUEST = frozenset({"x-request-id", "x-idgate-assertion"})

DASHED = tuple(h for h in SPOOFED_IDENTITY_HEADERS if "_" not in h.split(":", 1)[0])
UNDERSCORED = tuple(h for h in SPOOFED_IDENTITY_HEADERS if "_" in h.split(":", 1)[0])


@dataclass(frozen=True)
class Route:
    name: str
    target: str
    checked: bool          # ext_authz asks idgate (and the etl token is allowed); False: ext_authz disabled

    def __str__(self) -> str:
        return self.name


ROUTES = (Route("healthz", "/healthz", checked=False), Route("allowed", "/v1/orders/7", checked=True))


def request(s: EnvoyStack, route: Route, extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {s.etl_token()}\r\n" if route.checked else ""
    return f"GET {route.target} HTTP/1.1\r\nHost: orders.internal\r\n{auth}{extra}Connection: close\r\n\r\n".encode()


def as_seen(received: Received) -> tuple[str, str, list[tuple[str, str]]]:
    headers = sorted((n.lower(), "<per request>" if n.lower() in PER_REQUEST else v) for n, v in received.headers)
    return received.method, received.raw_path, headers


async def assert_only_idgate_identity(s: EnvoyStack, route: Route, spoofs: tuple[str, ...]) -> None:
    """Send the route's request without and then with `spoofs`: both pass, and the application sees
    the same request both times (idgate's identity on a checked route, none on /healthz)."""
    clean = await raw_http(s.envoy.port, request(s, route))
    spoofed = await raw_http(s.envoy.port, request(s, route, "".join(h + "\r\n" for h in spoofs)))
    assert (clean.status, spoofed.status) == (200, 200), spoofed.head
    [baseline, received] = s.upstream.received
    for spoof in spoofs:
        name, value = spoof.split(": ", 1)
        assert [h for h in received.headers if h[1] == value] == [], f"{spoof!r} reached the application"
        # Values minted per request (the assertion's iat and exp can change between the two) count by number.
        per_request = name.lower() in PER_REQUEST
        assert [per_request or v for v in received.header(name)] == [per_request or v for v in baseline.header(name)]
    if route.checked:
        assert received.header("X-Idgate-Subject") == ["svc-etl-7"]
        assert received.header("X-Idgate-Groups") == ["data-eng"]
        assert received.header("X-Idgate-Rule") == ["etl-read-orders"]
        assert [d["decision"] for d in await s.decisions()] == ["allow", "allow"]
    else:
        assert [n for n, _ in received.headers if n.lower().startswith("x-idgate-")] == []
        assert await s.decisions() == []
    assert as_seen(received) == as_seen(baseline)


@pytest.mark.parametrize("route", ROUTES, ids=str)
@pytest.mark.parametrize("spoof", DASHED)
async def test_spoofed_identity_header_never_reaches_the_app(envoy_stack, route, spoof):
    await assert_only_idgate_identity(envoy_stack, route, (spoof,))


@pytest.mark.parametrize("route", ROUTES, ids=str)
async def test_all_spoofed_identity_headers_at_once_never_reach_the_app(envoy_stack, route):
    await assert_only_idgate_identity(envoy_stack, route, DASHED)


@pytest.mark.parametrize("route", ROUTES, ids=str)
@pytest.mark.parametrize("spoof", UNDERSCORED)
async def test_underscore_spelling_is_refused_by_envoy(envoy_stack, route, spoof):
    """Servers that read X_Idgate_Subject as X-Idgate-Subject (CGI, some frameworks) would see a
    spoofed identity: Envoy answers 400 before any filter runs, and idgate is never asked."""
    s = envoy_stack
    response = await raw_http(s.envoy.port, request(s, route, spoof + "\r\n"))
    assert response.status == 400
    assert s.upstream.received == []
    assert await s.decisions() == []
    # The refusal is the underscore's: the same request without it passes.
    assert (await raw_http(s.envoy.port, request(s, route))).status == 200


def _matches(route: dict[str, Any], target: str) -> bool:
    match = route["match"]
    if set(match) == {"path"}:
        return bool(target == match["path"])
    if set(match) == {"prefix"}:
        return target.startswith(match["prefix"])
    raise AssertionError(f"a route match these tests do not model: {match}")


@pytest.mark.parametrize("mode", MODES)
def test_the_tests_above_reach_every_route_of_the_shipped_config(mode):
    """A route added to a shipped config (another ext_authz-free path, a per-route override) must get a
    Route above, or this fails: each route is the first match of one of the targets sent."""
    [virtual_host] = http_connection_manager(load_deploy_config(mode))["route_config"]["virtual_hosts"]
    routes = virtual_host["routes"]
    hit = {next(i for i, r in enumerate(routes) if _matches(r, route.target)) for route in ROUTES}
    assert hit == set(range(len(routes)))
