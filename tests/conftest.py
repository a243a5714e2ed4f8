"""Fixtures shared by every test directory.  Keep each fixture small and say which real component
it starts; directory-specific fixtures belong in that directory's conftest.py.  The stacks' fixtures
(stack, broker_stack, gateway_stack and their make_* factories) are defined beside their stacks in
tests/harness and registered here once as plugins, so no test module imports a fixture to make pytest see it."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from proxy import logs as proxy_logs

from tests.harness.moto import MotoServer
from tests.harness.oidc_provider import OidcProvider
from tests.harness.otlp import OtlpReceiver

pytest_plugins = ["tests.harness.stack", "tests.harness.broker", "tests.harness.gateway", "tests.harness.shipping"]


@pytest.fixture(scope="session")
def oidc_provider() -> Iterator[OidcProvider]:
    """The real node OpenID Provider (tests/harness/oidc_provider_node), one process for the whole session.

    Tests that flip its outage switch must switch it back (try/finally); rotated keys stay, which
    other tests tolerate because a verifier refetches on an unknown kid.
    """
    with OidcProvider() as provider:
        yield provider


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """A real moto server (moto_server from moto[server]: STS, IAM, DynamoDB), one process for the session.
    Tests use the `moto` fixture, which resets its state first."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    """moto with no roles, tables or sessions, and a fresh recording of the requests it receives."""
    moto_server.reset()
    return moto_server


class JsonLogs:
    """What idgate's own log configuration (proxy.logs.configure) wrote, one parsed JSON object a line."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines()]


@pytest.fixture
def json_logs() -> Iterator[Callable[..., JsonLogs]]:
    """configure(level, **kwargs) runs proxy.logs.configure into a buffer; the test's end puts the root
    logger's handlers, its level and aiohttp.server's filters back (pytest's capture lives there)."""
    root, server = logging.getLogger(), logging.getLogger("aiohttp.server")
    handlers, level, filters = root.handlers[:], root.level, server.filters[:]

    def configure(level: str = "info", **kwargs: Any) -> JsonLogs:
        logs = JsonLogs()
        proxy_logs.configure(level, logs.stream, **kwargs)
        return logs

    try:
        yield configure
    finally:
        root.handlers[:], server.filters[:] = handlers, filters
        root.setLevel(level)


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """A real OTLP/HTTP receiver (oteltest's sink, tests/harness/otlp_receiver.py), one process for the
    session: tests find their own spans by trace id (from their audit records or requests)."""
    with OtlpReceiver() as receiver:
        yield receiver
