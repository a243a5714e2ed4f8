"""A full stack per test: development issuer, recording upstream, idgate with the example policies.
Its fixtures are registered for every test by tests/conftest.py (pytest_plugins)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness.paths import POLICIES
from tests.harness.servers import (
    LocalIssuer, RecordingUpstream, RunningIdgate, local_issuer, running_idgate, serve_app, write_config,
)

EXAMPLE_ISSUER = "http://127.0.0.1:9400"  # the demo issuer named in policies/*.yaml


def example_policies(tmp: Path, issuer: str) -> Path:
    """The shipped example policies, pointed at this test's issuer."""
    target = tmp / "policies"
    target.mkdir()
    for source in sorted(POLICIES.glob("*.yaml")):
        (target / source.name).write_text(source.read_text().replace(EXAMPLE_ISSUER, issuer))
    return target


@dataclass
class Stack:
    issuer: LocalIssuer
    upstream: RecordingUpstream
    idgate: RunningIdgate
    http: aiohttp.ClientSession

    def etl_token(self) -> str:
        return self.issuer.token("svc-etl-7", ("data-eng",), tenant="acme")

    def web_token(self) -> str:
        return self.issuer.token("svc-web-1", ("web",), tenant="acme")

    async def get(self, path: str, *, token: str | None = None, host: str = "orders.internal",
                  **kwargs: Any) -> aiohttp.ClientResponse:
        headers = {"Host": host, **kwargs.pop("headers", {})}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return await self.http.request(kwargs.pop("method", "GET"), self.base_url + path, headers=headers, **kwargs)

    @property
    def base_url(self) -> str:
        """Where clients send requests: idgate itself here, Envoy in front of it for the sidecar suite."""
        return self.idgate.url

    async def decisions(self) -> list[dict[str, Any]]:
        return [r for r in await self.idgate.audit_records() if r["event"] == "decision"]


@pytest.fixture
async def make_stack(tmp_path: Path):
    """Factory so a test can tweak the config (route limits, trusted proxies...) before idgate starts."""
    async def factory(**config: Any) -> Stack:
        issuer = await stack_exits.enter_async_context(local_issuer("orders-api"))
        upstream = RecordingUpstream()
        upstream.port = await stack_exits.enter_async_context(serve_app(upstream.app()))
        stack_exits.callback(upstream.release.set)
        path = write_config(tmp_path, issuer=issuer.issuer.issuer_url, audience="orders-api",
                            upstream_port=upstream.port,
                            policies=example_policies(tmp_path, issuer.issuer.issuer_url), **config)
        idgate = await stack_exits.enter_async_context(running_idgate(path))
        http = await stack_exits.enter_async_context(aiohttp.ClientSession(auto_decompress=False))
        return Stack(issuer, upstream, idgate, http)

    async with AsyncExitStack() as stack_exits:
        yield factory


@pytest.fixture
async def stack(make_stack) -> AsyncIterator[Stack]:
    yield await make_stack()
