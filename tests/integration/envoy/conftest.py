"""Real Envoy in front of a recording upstream, asking a real in-process idgate, in both ext_authz modes.

A fresh Envoy per test: it is ready in about 0.1 s, and a fresh one cannot carry pooled connections
from one test's idgate into the next.  Every Envoy is stopped by its fixture, also when a test fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.harness.envoy import MODES, RunningEnvoy, load_deploy_config, render, running_envoy
from tests.harness.processes import HOST
from tests.harness.servers import (
    RecordingUpstream, local_issuer, running_idgate, serve_app, write_config,
)
from tests.harness.stack import Stack, example_policies

AUDIENCE = "orders-api"


class StallingJwks:
    """Serves the issuer's JWKS until stalled; then holds every JWKS request until released, so
    idgate becomes slow for a token with an unknown key id."""

    def __init__(self, issuer_url: str) -> None:
        self._issuer_url = issuer_url
        self.stalled = False
        self.release = asyncio.Event()

    def app(self) -> web.Application:
        async def jwks(request: web.Request) -> web.Response:
            if self.stalled:
                await self.release.wait()
            async with aiohttp.ClientSession() as http, http.get(self._issuer_url + "/jwks") as upstream:
                return web.json_response(await upstream.json())

        app = web.Application()
        app.router.add_get("/jwks", jwks)
        return app


@dataclass
class EnvoyStack(Stack):
    """The spine's Stack with Envoy in front: the same tokens, requests and audit helpers."""

    mode: str = ""
    envoy: RunningEnvoy | None = None
    jwks: StallingJwks | None = None

    @property
    def surface(self) -> str:
        return f"ext_authz_{self.mode}"

    @property
    def base_url(self) -> str:
        assert self.envoy is not None
        return self.envoy.url


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_envoy_stack(tmp_path: Path, mode: str):
    """Factory: issuer, recording upstream, idgate (both ext_authz surfaces, Envoy trusted), and Envoy
    from deploy/envoy/envoy-<mode>.yaml pointed at them.  Keyword arguments go to idgate's config;
    `envoy_timeout` overrides the ext_authz timeout, `idgate_port` points Envoy elsewhere, `collector_port`
    turns Envoy's OpenTelemetry tracer on (exporting there)."""
    async def factory(*, envoy_timeout: str | None = None, idgate_port: int | None = None,
                      collector_port: int | None = None, **config: Any) -> EnvoyStack:
        issuer = await exits.enter_async_context(local_issuer(AUDIENCE))
        upstream = RecordingUpstream()
        upstream.port = await exits.enter_async_context(serve_app(upstream.app()))
        exits.callback(upstream.release.set)
        jwks = StallingJwks(issuer.issuer.issuer_url)
        jwks_port = await exits.enter_async_context(serve_app(jwks.app()))
        config.setdefault("trusted_proxies", [f"{HOST}/32"])
        config.setdefault("ext_authz", {"http": {}, "grpc": {"host": HOST, "port": 0}})
        path = write_config(tmp_path, issuer=issuer.issuer.issuer_url, audience=AUDIENCE, upstream_port=upstream.port,
                            policies=example_policies(tmp_path, issuer.issuer.issuer_url),
                            issuer_extra={"jwks_uri": f"http://{HOST}:{jwks_port}/jwks", "unknown_kid_min_interval": 0.001},
                            **config)
        idgate = await exits.enter_async_context(running_idgate(path))
        exits.callback(jwks.release.set)   # runs before idgate stops: nothing may hang its shutdown
        port = idgate_port or (idgate.listeners.grpc_port if mode == "grpc" else idgate.port)
        envoy_config = render(load_deploy_config(mode), app_port=upstream.port, idgate_port=port,
                              ext_authz_timeout=envoy_timeout, collector_port=collector_port)
        envoy = await exits.enter_async_context(running_envoy(envoy_config, tmp_path / "envoy"))
        http = await exits.enter_async_context(aiohttp.ClientSession(auto_decompress=False))
        return EnvoyStack(issuer=issuer, upstream=upstream, idgate=idgate, http=http, mode=mode, envoy=envoy, jwks=jwks)

    async with AsyncExitStack() as exits:
        yield factory


@pytest.fixture
async def envoy_stack(make_envoy_stack) -> AsyncIterator[EnvoyStack]:
    yield await make_envoy_stack()
