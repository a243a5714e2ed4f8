import asyncio

from proxy.metrics import Metrics
from proxy.policy_store import PolicyStore
from tests.factories import make_identity

ALLOW = "rules:\n  - id: {id}\n    who: {{subject: [svc-etl-7]}}\n    http: [{{paths: [/v1/**]}}]\n"


def decide(store):
    return store.current.decide_http(make_identity(), "GET", "orders.internal", "/v1/x")


async def test_reload_swaps_and_a_bad_file_keeps_the_previous_policy(tmp_path):
    (tmp_path / "a.yaml").write_text(ALLOW.format(id="first"))
    metrics = Metrics()
    store = PolicyStore(tmp_path, metrics)
    assert decide(store).rule_id == "first"
    (tmp_path / "a.yaml").write_text(ALLOW.format(id="second"))
    assert await store.reload() is True
    assert decide(store).rule_id == "second"
    previous = store.current
    (tmp_path / "b.yaml").write_text("rules:\n  - id: second\n    who: {any: true}\n    http: [{paths: [/x]}]\n")
    assert await store.reload() is False
    assert store.current is previous and decide(store).rule_id == "second"
    assert "b.yaml" in store.last_error
    assert metrics.policy_reloads.labels("error")._value.get() == 1


async def test_watch_reloads_on_file_change(tmp_path):
    (tmp_path / "a.yaml").write_text(ALLOW.format(id="first"))
    store = PolicyStore(tmp_path, Metrics())
    watcher = asyncio.create_task(store.watch(0.01))
    try:
        (tmp_path / "a.yaml").write_text(ALLOW.format(id="changed-rule"))
        async with asyncio.timeout(10):
            while decide(store).rule_id != "changed-rule":
                await asyncio.sleep(0.01)  # polling the swapped reference, bounded by the timeout
    finally:
        watcher.cancel()
