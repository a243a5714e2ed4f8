"""Fixtures of the security tests."""

from __future__ import annotations

import pytest

from tests.harness.gateway import GatewayFactory, GatewayStack, create_tables


@pytest.fixture
async def gateway(make_gateway_stack: GatewayFactory) -> GatewayStack:
    """The gateway stack with the tenant role and the tables, and moto's recording of that setup cleared:
    whatever moto records from here on reached it through idgate."""
    stack = await make_gateway_stack(gateway={"hosts": []})
    stack.moto.create_role("tenant")
    create_tables(stack.moto)
    stack.moto.clear_recording()
    return stack
