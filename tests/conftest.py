"""Fixtures shared by every test directory.  Keep each fixture small and say which real component
it starts; directory-specific fixtures belong in that directory's conftest.py.  The stacks' fixtures
(stack, broker_stack, gateway_stack and their make_* factories) are defined beside their stacks in
tests/harness and registered here once as plugins, so no test module imports a fixture to make pytest see it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.moto import MotoServer
from tests.harness.oidc_provider import OidcProvider

pytest_plugins = ["tests.harness.stack", "tests.harness.broker", "tests.harness.gateway"]


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
