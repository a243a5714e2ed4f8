"""The spine's request-level attack cases (tests/security/attack_cases.py), sent through a real Envoy
asking idgate over HTTP and gRPC ext_authz: the same admission as the reverse proxy (a target Envoy
would forward in a spelling idgate did not decide on is refused first), the same audited reasons, and
nothing reaches the upstream that idgate did not vouch for.  Spoofed identity headers, which Envoy itself
removes on every route, are in test_envoy_identity_headers.py."""

from __future__ import annotations

import pytest

from tests.integration.envoy.conftest import EnvoyStack
from tests.security.attack_cases import OVERRIDE_HEADERS, OVERSIZED_HEADER, PATH_TRICKS, PathTrick
from tests.harness.servers import raw_http


def raw(s: EnvoyStack, target: str, *, token: str | None = None, extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET {target} HTTP/1.1\r\nHost: orders.internal\r\n{auth}{extra}Connection: close\r\n\r\n".encode()


async def assert_refused_and_audited(s: EnvoyStack, status: int, expected: int, reason: str) -> None:
    assert status == expected
    assert s.upstream.received == []
    [decision] = await s.decisions()
    assert decision["decision"] == "deny" and decision["reasons"] == [reason]
    assert decision["surface"] == s.surface


@pytest.mark.parametrize("trick", PATH_TRICKS, ids=str)
async def test_path_tricks_are_refused_before_a_decision_on_a_spelling_envoy_forwards(envoy_stack, trick: PathTrick):
    s = envoy_stack
    response = await raw_http(s.envoy.port, raw(s, trick.target, token=s.etl_token()))
    await assert_refused_and_audited(s, response.status, *trick.forwarded_by_peer())


@pytest.mark.parametrize("header", [h for h in OVERRIDE_HEADERS if "_" not in h.split(":")[0]])
async def test_method_and_url_override_headers_are_refused(envoy_stack, header):
    s = envoy_stack
    response = await raw_http(s.envoy.port, raw(s, "/v1/orders/7", token=s.etl_token(), extra=header + "\r\n"))
    await assert_refused_and_audited(s, response.status, 400, "override_header")


@pytest.mark.parametrize("header", [h for h in OVERRIDE_HEADERS if "_" in h.split(":")[0]])
async def test_underscore_override_headers_are_refused_by_envoy_itself(envoy_stack, header):
    """headers_with_underscores_action: REJECT_REQUEST answers 400 before idgate is asked."""
    s = envoy_stack
    response = await raw_http(s.envoy.port, raw(s, "/v1/orders/7", token=s.etl_token(), extra=header + "\r\n"))
    assert response.status == 400
    assert s.upstream.received == []
    assert await s.decisions() == []


async def test_oversized_header_is_431(envoy_stack):
    s = envoy_stack
    response = await raw_http(s.envoy.port, raw(s, "/v1/orders/7", token=s.etl_token(), extra=OVERSIZED_HEADER + "\r\n"))
    await assert_refused_and_audited(s, response.status, 431, "header_too_large")


async def test_query_does_not_take_part_in_path_matching(envoy_stack):
    s = envoy_stack
    response = await raw_http(s.envoy.port, raw(s, "/v1/orders?next=/../admin", token=s.etl_token()))
    assert response.status == 200
    assert s.upstream.received[0].raw_path == "/v1/orders?next=/../admin"


async def test_a_path_idgate_would_rewrite_is_refused_not_passed_on(envoy_stack):
    """The reverse proxy forwards the canonical path; through Envoy the upstream would get the spelling
    the client sent, which idgate did not authorize: refused at admission, before any token is looked at."""
    s = envoy_stack
    response = await raw_http(s.envoy.port, raw(s, "/v1/orders/./7/../8//%7Eitem", token=s.etl_token()))
    assert response.status == 400
    assert s.upstream.received == []
    [record] = await s.idgate.audit_records()
    assert record["decision"] == "deny" and record["reasons"] == ["non_canonical_path"]
    assert record["identity"] is None and record["target"]["raw_path"] == "/v1/orders/./7/../8//%7Eitem"


async def test_duplicate_authorization_headers_are_refused(envoy_stack):
    s = envoy_stack
    extra = "Authorization: Bearer other.token.here\r\n"
    response = await raw_http(s.envoy.port, raw(s, "/v1/orders/7", token=s.etl_token(), extra=extra))
    assert response.status == 400
    assert s.upstream.received == []
