"""The reverse proxy with tokens from the real OpenID Provider (npm oidc-provider): what a platform
engineer gets when idgate sits in front of a service and the company IdP issues the tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.harness.servers import RecordingUpstream, RunningIdgate, running_idgate, serve_app, write_config

RESOURCE = "https://orders.internal"


def write_policy(directory: Path, issuer: str) -> Path:
    directory.mkdir()
    (directory / "orders.yaml").write_text(f"""\
rules:
  - id: etl-reads-orders
    who: {{issuer: "{issuer}", subject: [svc-etl-*], groups: [data-eng]}}
    http:
      - hosts: [orders.internal]
        methods: [GET]
        paths: ["/v1/orders/**"]
""")
    return directory


@pytest.fixture
async def op_stack(oidc_provider, tmp_path) -> AsyncIterator[tuple[RunningIdgate, RecordingUpstream]]:
    upstream = RecordingUpstream()
    async with serve_app(upstream.app()) as port:
        upstream.port = port
        config = write_config(tmp_path, issuer=oidc_provider.issuer, audience=RESOURCE, upstream_port=port,
                              policies=write_policy(tmp_path / "policies", oidc_provider.issuer),
                              issuer_extra={"require_typ": "at+jwt", "unknown_kid_min_interval": 1})
        async with running_idgate(config) as idgate:
            yield idgate, upstream


async def get(idgate: RunningIdgate, token: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(idgate.url + "/v1/orders/7", headers={
                "Host": "orders.internal", "Authorization": f"Bearer {token}"}) as response:
            return response.status, await response.json(content_type=None)


async def last_decision(idgate: RunningIdgate) -> dict:
    return [r for r in await idgate.audit_records() if r["event"] == "decision"][-1]


async def test_client_credentials_token_from_the_op_is_allowed(op_stack, oidc_provider):
    idgate, upstream = op_stack
    status, _ = await get(idgate, oidc_provider.token("svc-etl-7", RESOURCE, "orders:read"))
    assert status == 200
    assert upstream.received[0].header("X-Idgate-Subject") == ["svc-etl-7"]
    assert (await last_decision(idgate))["identity"]["groups"] == ["data-eng", "etl"]


async def test_token_for_another_resource_is_refused(op_stack, oidc_provider):
    idgate, upstream = op_stack
    status, body = await get(idgate, oidc_provider.token("svc-etl-7", "https://billing.internal", "billing:read"))
    assert status == 401 and body["code"] == "unauthenticated"
    assert upstream.received == []
    assert (await last_decision(idgate))["reasons"] == ["bad_audience"]


async def test_id_token_is_not_an_access_token(op_stack, oidc_provider):
    idgate, upstream = op_stack
    status, _ = await get(idgate, oidc_provider.id_token())
    assert status == 401
    assert upstream.received == []
    assert (await last_decision(idgate))["decision"] == "deny"


async def test_identity_the_policy_does_not_name_is_403(op_stack, oidc_provider):
    idgate, upstream = op_stack
    status, _ = await get(idgate, oidc_provider.token("svc-report", RESOURCE, "orders:read"))
    assert status == 403
    assert upstream.received == []


async def test_rotated_signing_key_is_picked_up(op_stack, oidc_provider):
    idgate, upstream = op_stack
    assert (await get(idgate, oidc_provider.token("svc-etl-7", RESOURCE, "orders:read")))[0] == 200
    oidc_provider.rotate_keys()
    status, _ = await get(idgate, oidc_provider.token("svc-etl-7", RESOURCE, "orders:read"))
    assert status == 200
    assert len(upstream.received) == 2


async def test_issuer_outage_keeps_last_good_keys(op_stack, oidc_provider):
    idgate, upstream = op_stack
    oidc_provider.outage(True)
    try:
        status, _ = await get(idgate, oidc_provider.token("svc-etl-7", RESOURCE, "orders:read"))
    finally:
        oidc_provider.outage(False)
    assert status == 200
    assert upstream.received[0].header("X-Idgate-Subject") == ["svc-etl-7"]


async def test_a_key_rotated_during_an_outage_is_a_503_to_retry_not_a_401(op_stack, oidc_provider):
    idgate, upstream = op_stack
    assert (await get(idgate, oidc_provider.token("svc-etl-7", RESOURCE, "orders:read")))[0] == 200
    oidc_provider.rotate_keys()
    rotated = oidc_provider.token("svc-etl-7", RESOURCE, "orders:read")
    oidc_provider.outage(True)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(idgate.url + "/v1/orders/7", headers={
                    "Host": "orders.internal", "Authorization": f"Bearer {rotated}"}) as response:
                status, retry_after, body = response.status, response.headers.get("Retry-After"), await response.json()
    finally:
        oidc_provider.outage(False)
    assert (status, retry_after, body["code"]) == (503, "1", "unavailable")
    assert (await last_decision(idgate))["reasons"] == ["issuer_unavailable"]
    assert len(upstream.received) == 1                  # only the first request moved
