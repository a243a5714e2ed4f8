"""A reload that changes access is on the audit log as a `policy_change` record (which rules, which way,
who gains and loses what) before the new policy decides anything; when the record cannot be written the
old policy stays.  Real idgate, real traffic around the reload."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.harness.stack import Stack
from tests.harness.faults import file_size_limit


def policies_of(stack: Stack) -> Path:
    return stack.idgate.services.config.policies_dir


async def test_a_reload_under_traffic_records_the_change_before_it_decides(stack: Stack) -> None:
    token = stack.etl_token()

    async def traffic() -> list[int]:
        statuses = []
        for _ in range(40):
            async with await stack.get("/v1/orders", method="POST", token=token) as response:
                statuses.append(response.status)
        return statuses

    running = asyncio.create_task(traffic())
    orders = policies_of(stack) / "orders.yaml"
    orders.write_text(orders.read_text().replace("methods: [GET, HEAD]", "methods: [GET, HEAD, POST]"))
    assert await stack.idgate.services.policy.reload()
    statuses = await running
    async with await stack.get("/v1/orders", method="POST", token=token) as response:
        assert response.status == 200
    assert set(statuses) <= {200, 403}

    records = await stack.idgate.audit_records()
    changes = [r for r in records if r["event"] == "policy_change"]
    assert len(changes) == 1
    change = changes[0]
    assert change["changed"] == [{"rule": "etl-read-orders", "direction": "wider", "fields": ["grants"]}]
    assert change["added"] == [] and change["removed"] == [] and change["rules"] == 6
    gained = {a["identity"]: a["gained"] for a in change["access"]}
    assert any("allow POST orders.internal /v1/orders" in g for g in gained.values())
    # Every POST allowed comes after the change record in the chain: none was decided by a policy the
    # audit did not know of.
    seq_of_change = change["seq"]
    allowed_posts = [r for r in records if r["event"] == "decision" and r["decision"] == "allow"
                     and r["target"]["method"] == "POST"]
    assert allowed_posts and all(r["seq"] > seq_of_change for r in allowed_posts)


async def test_a_reload_without_a_change_in_access_records_nothing(stack: Stack) -> None:
    orders = policies_of(stack) / "orders.yaml"
    orders.write_text("# a comment only\n" + orders.read_text())
    assert await stack.idgate.services.policy.reload()
    assert [r for r in await stack.idgate.audit_records() if r["event"] == "policy_change"] == []


async def test_when_the_change_cannot_be_recorded_the_old_policy_stays(stack: Stack) -> None:
    token = stack.etl_token()
    services = stack.idgate.services
    orders = policies_of(stack) / "orders.yaml"
    orders.write_text(orders.read_text().replace("methods: [GET, HEAD]", "methods: [GET, HEAD, POST]"))
    audit_path = services.config.audit.path
    with file_size_limit(audit_path.stat().st_size + 10):       # the kernel refuses the record (EFBIG)
        assert not await services.policy.reload()
    assert services.policy.last_error
    async with await stack.get("/v1/orders", method="POST", token=token) as response:
        assert response.status == 403                              # the old policy still decides
    assert [r for r in await stack.idgate.audit_records() if r["event"] == "policy_change"] == []
    assert await services.policy.reload()                          # the audit is back: the change goes in
    async with await stack.get("/v1/orders", method="POST", token=token) as response:
        assert response.status == 200
