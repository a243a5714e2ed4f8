from proxy.metrics import Metrics
from proxy.policy.store import PolicyStore
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


async def test_a_changed_file_is_picked_up_once(tmp_path):
    (tmp_path / "a.yaml").write_text(ALLOW.format(id="first"))
    metrics = Metrics()
    store = PolicyStore(tmp_path, metrics)
    assert await store.reload_if_changed() is False       # nothing changed since the initial load
    (tmp_path / "a.yaml").write_text(ALLOW.format(id="changed-rule"))
    assert await store.reload_if_changed() is True
    assert decide(store).rule_id == "changed-rule"
    assert await store.reload_if_changed() is False
    (tmp_path / "b.yaml").write_text("rules: [")             # a broken file is tried once, not every poll
    assert await store.reload_if_changed() is False
    assert store.last_error is not None and decide(store).rule_id == "changed-rule"
    assert await store.reload_if_changed() is False
    assert metrics.policy_reloads.labels("error")._value.get() == 1
