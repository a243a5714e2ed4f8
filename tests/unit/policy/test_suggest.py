"""proxy.policy.suggest's folding of observed paths, and which rules a window used."""

from __future__ import annotations

from proxy.policy.suggest import MAX_CHILDREN, Observations


def allowed(path: str, *, sub: str = "svc-a", method: str = "GET", rule: str = "r") -> dict:
    return {"event": "decision", "decision": "allow", "surface": "proxy", "rule": rule,
            "identity": {"iss": "https://login.example.com", "sub": sub}, "target": {"method": method,
                                                                                      "host": "h.internal", "path": path}}


def patterns(seen: Observations) -> list[tuple[str, int]]:
    [suggestion] = seen.suggestions()
    [grant] = suggestion.grants
    return list(grant.paths)


def test_a_position_folds_to_a_star_only_with_enough_distinct_values():
    seen = Observations(min_distinct=3)
    for path in ("/v1/orders/1", "/v1/orders/2"):
        seen.add(allowed(path))
    assert patterns(seen) == [("/v1/orders/1", 1), ("/v1/orders/2", 1)]
    seen.add(allowed("/v1/orders/3"))
    assert patterns(seen) == [("/v1/orders/*", 3)]


def test_requests_ending_at_many_depths_become_a_double_star():
    seen = Observations(min_distinct=3)
    for path in ("/files/a", "/files/a/b", "/files/a/b/c", "/files/x", "/files/y"):
        seen.add(allowed(path))
    assert patterns(seen) == [("/files/**", 5)]


def test_a_position_with_too_many_values_folds_while_reading_so_memory_stays_bounded():
    seen = Observations(min_distinct=MAX_CHILDREN * 2)        # never folded by the rule: only by the bound
    for n in range(MAX_CHILDREN + 10):
        seen.add(allowed(f"/v1/orders/{n}"))
    assert patterns(seen) == [("/v1/orders/*", MAX_CHILDREN + 10)]


def test_denials_other_surfaces_and_capped_values_propose_nothing():
    seen = Observations()
    seen.add({**allowed("/x"), "decision": "deny"})
    seen.add({**allowed("/x"), "target": {"method": "GET", "host": "h", "path": {"capped": True, "sha256": "00"}}})
    assert seen.suggestions() == [] and seen.skipped == 1


def test_an_aws_vend_marks_its_rules_used():
    seen = Observations()
    seen.add({"event": "decision", "decision": "allow", "surface": "credentials", "rule": "etl-orders-table",
              "aws": {"role_arn": "arn:aws:iam::123456789012:role/etl", "rules": ["etl-orders-table"]}})
    seen.add({"event": "decision", "decision": "allow", "surface": "dynamodb", "rule": "etl-orders-gateway",
              "dynamodb": {"rules": ["etl-orders-gateway"]}})
    from proxy.policy.store import compile_directory
    from tests.harness.paths import POLICIES
    unused = {u.rule_id for u in seen.unused(compile_directory(POLICIES))}
    assert "etl-orders-table" not in unused and "etl-orders-gateway" not in unused
    assert "data-eng-read-reports" in unused


def test_a_path_no_pattern_spells_is_left_out_not_widened():
    seen = Observations()
    for path in ("/files/a%20b", "/files/x;y", "/files/*", "/files/**"):
        seen.add(allowed(path))
    seen.add(allowed("/files/ok"))
    seen.add({**allowed("/files/ok"), "target": {"method": "GET", "host": "10.0.0.1:8443", "path": "/files/ok"}})
    assert patterns(seen) == [("/files/ok", 1)]
    assert seen.unspellable == 5
