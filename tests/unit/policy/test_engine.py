"""Unit tests for proxy.policy.engine and its index: matching semantics, deny precedence, compile errors,
and agreement with a brute-force reference on generated policies."""

from __future__ import annotations

import fnmatch
import random
from collections import Counter
from types import MappingProxyType
from typing import Any

import pytest

from proxy.core.errors import ConfigError
from proxy.core.model import Identity
from proxy.policy.engine import CompiledPolicy, HttpExplanation
from proxy.policy.rules import AwsGrant, DynamoDbGrant, Effect, HttpGrant, Rule, Who
from tests.factories import DEFAULT_ISSUER, make_identity

ANYONE = Who(any=True)


def grant(*paths: str, hosts: tuple[str, ...] = (), methods: tuple[str, ...] = ()) -> HttpGrant:
    return HttpGrant(paths=paths, hosts=hosts, methods=methods)


def allow(rule_id: str, who: Who, *grants: HttpGrant, aws: AwsGrant | None = None) -> Rule:
    return Rule(id=rule_id, who=who, http=grants, aws=aws, file="policies/test.yaml", line=1)


def deny(rule_id: str, who: Who, *grants: HttpGrant) -> Rule:
    return Rule(id=rule_id, who=who, effect=Effect.DENY, http=grants, file="policies/test.yaml", line=1)


def claims(**values: tuple[str, ...]) -> MappingProxyType[str, tuple[str, ...]]:
    return MappingProxyType(dict(values))


def decide(policy: CompiledPolicy, identity: Identity, path: str, method: str = "GET",
           host: str = "orders.internal") -> tuple[bool, str | None, tuple[str, ...]]:
    decision = policy.decide_http(identity, method, host, path)
    return decision.allowed, decision.rule_id, decision.reasons


def allowed(policy: CompiledPolicy, identity: Identity, path: str, method: str = "GET",
            host: str = "orders.internal") -> bool:
    return policy.decide_http(identity, method, host, path).allowed


# -- decisions as data --------------------------------------------------------------------------------------

def test_empty_policy_denies_by_default() -> None:
    identity = make_identity()
    decision = CompiledPolicy.compile(()).decide_http(identity, "GET", "orders.internal", "/")
    assert (decision.allowed, decision.rule_id, decision.reasons) == (False, None, ("no_matching_rule",))
    assert decision.identity is identity


def test_allow_carries_rule_id_reason_and_identity() -> None:
    identity = make_identity()
    policy = CompiledPolicy.compile((allow("read", ANYONE, grant("/v1/orders")),))
    decision = policy.decide_http(identity, "GET", "orders.internal", "/v1/orders")
    assert (decision.allowed, decision.rule_id, decision.reasons) == (True, "read", ("matched",))
    assert decision.identity is identity


def test_deny_wins_over_an_earlier_allow() -> None:
    policy = CompiledPolicy.compile((
        allow("everything", ANYONE, grant("/**")),
        deny("no-admin", ANYONE, grant("/admin/**")),
    ))
    assert decide(policy, make_identity(), "/admin/users") == (False, "no-admin", ("denied_by_rule",))
    assert decide(policy, make_identity(), "/public") == (True, "everything", ("matched",))


def test_deny_applies_only_to_the_identities_it_names() -> None:
    policy = CompiledPolicy.compile((
        deny("no-contractors", Who(groups=("contractors",)), grant("/payroll/**")),
        allow("staff", ANYONE, grant("/payroll/**")),
    ))
    assert decide(policy, make_identity(groups=("contractors",)), "/payroll/2026")[1] == "no-contractors"
    assert decide(policy, make_identity(groups=("staff",)), "/payroll/2026") == (True, "staff", ("matched",))


def test_first_allow_in_load_order_decides() -> None:
    policy = CompiledPolicy.compile((
        allow("second-by-path", ANYONE, grant("/v1/**")),
        allow("exact", ANYONE, grant("/v1/orders")),
    ))
    assert decide(policy, make_identity(), "/v1/orders")[1] == "second-by-path"


def test_first_deny_in_load_order_decides() -> None:
    policy = CompiledPolicy.compile((
        allow("all", ANYONE, grant("/**")),
        deny("deny-b", ANYONE, grant("/x/*")),
        deny("deny-a", ANYONE, grant("/x/**")),
    ))
    assert decide(policy, make_identity(), "/x/1")[1] == "deny-b"
    assert decide(policy, make_identity(), "/x/1/2")[1] == "deny-a"


def test_rule_without_http_grants_never_decides_http() -> None:
    aws = AwsGrant(role_arn="arn:aws:iam::123456789012:role/etl",
                   dynamodb=(DynamoDbGrant(table="orders", actions=("GetItem",)),))
    policy = CompiledPolicy.compile((allow("aws-only", ANYONE, aws=aws),))
    assert decide(policy, make_identity(), "/") == (False, None, ("no_matching_rule",))


# -- who ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("svc-etl-7", True),
        ("svc-etl-", True),             # fnmatch `*` matches the empty string
        ("svc-etl", False),
        ("xsvc-etl-7", False),
        ("SVC-ETL-7", False),           # case-sensitive
        ("job-a1", True),
        ("job-ab", False),
        ("job-b9", True),
        ("job-cc", False),
        ("exact.name", True),
        ("exactxname", False),          # `.` is literal, not a regex wildcard
        ("exact.name\n", False),
        ("svc.x", True),
        ("svcXx", False),
    ],
)
def test_subject_globs_have_fnmatchcase_semantics(subject: str, expected: bool) -> None:
    who = Who(subjects=("svc-etl-*", "job-?[0-9]", "job-[!a]9", "exact.name", "svc.*"))
    policy = CompiledPolicy.compile((allow("r", who, grant("/**")),))
    assert allowed(policy, make_identity(subject), "/") is expected


def test_issuer_is_exact_any_of() -> None:
    policy = CompiledPolicy.compile((allow("r", Who(issuers=("https://a.test", "https://b.test")), grant("/**")),))
    assert allowed(policy, make_identity(issuer="https://b.test"), "/")
    assert not allowed(policy, make_identity(issuer="https://b.test/"), "/")
    assert not allowed(policy, make_identity(issuer=DEFAULT_ISSUER), "/")


def test_groups_are_any_of() -> None:
    policy = CompiledPolicy.compile((allow("r", Who(groups=("data-eng", "ops")), grant("/**")),))
    assert allowed(policy, make_identity(groups=("ops",)), "/")
    assert allowed(policy, make_identity(groups=("x", "data-eng")), "/")
    assert not allowed(policy, make_identity(groups=("data",)), "/")
    assert not allowed(policy, make_identity(groups=()), "/")


def test_client_ids_are_any_of() -> None:
    policy = CompiledPolicy.compile((allow("r", Who(client_ids=("etl",)), grant("/**")),))
    assert allowed(policy, make_identity(client_id="etl"), "/")
    assert not allowed(policy, make_identity(client_id="etl2"), "/")
    assert not allowed(policy, make_identity(client_id=None), "/")


@pytest.mark.parametrize(
    ("claim", "exact", "contains"),
    [
        ("acme", True, False),
        ("globex", True, False),
        ("ACME", False, False),
        (["other", "acme"], False, True),     # a list holding the value is not the value
        (["acme"], False, True),
        (["other"], False, False),
        ([], False, False),
        ([["acme"]], False, False),
        (None, False, False),
        (True, False, False),
        (7, False, False),
        ({"acme": 1}, False, False),
    ],
)
def test_claims_are_exact_and_claims_contain_reads_lists(claim: Any, exact: bool, contains: bool) -> None:
    """`claims: {tenant: acme}` is an exact match: a token whose tenant is [acme, globex] speaks for two
    tenants and must not pass a rule for one.  A rule that means a list says `claims_contain`."""
    extra = {} if claim is None else {"tenant": claim}
    identity = make_identity(claims=extra)
    exact_policy = CompiledPolicy.compile((allow("r", Who(claims=claims(tenant=("acme", "globex"))), grant("/**")),))
    contain_policy = CompiledPolicy.compile((allow("r", Who(claims_contain=claims(tenant=("acme", "globex"))),
                                                   grant("/**")),))
    assert allowed(exact_policy, identity, "/") is exact
    assert allowed(contain_policy, identity, "/") is contains


def test_boolean_claims_are_not_coerced_to_strings() -> None:
    policy = CompiledPolicy.compile((allow("r", Who(claims=claims(admin=("true",))), grant("/**")),))
    assert not allowed(policy, make_identity(claims={"admin": True}), "/")
    assert allowed(policy, make_identity(claims={"admin": "true"}), "/")


def test_all_who_fields_must_match() -> None:
    who = Who(issuers=(DEFAULT_ISSUER,), subjects=("svc-*",), groups=("data-eng",), client_ids=("etl",),
              claims=claims(tenant=("acme",)))
    policy = CompiledPolicy.compile((allow("r", who, grant("/**")),))
    good: dict[str, Any] = dict(subject="svc-1", groups=("data-eng",), client_id="etl", claims={"tenant": "acme"})
    assert allowed(policy, make_identity(**good), "/")
    for field, wrong in (("subject", "job-1"), ("groups", ("ops",)), ("client_id", "web"),
                         ("claims", {"tenant": "globex"}), ("issuer", "https://other.test")):
        assert not allowed(policy, make_identity(**{**good, field: wrong}), "/"), field


def test_any_matches_every_identity() -> None:
    policy = CompiledPolicy.compile((allow("r", ANYONE, grant("/**")),))
    assert allowed(policy, make_identity("whoever", issuer="https://elsewhere.test"), "/")


def test_identical_who_blocks_are_matched_independently_per_rule() -> None:
    who = Who(subjects=("svc-*",))
    policy = CompiledPolicy.compile((
        allow("a", who, grant("/a")),
        allow("b", Who(subjects=("svc-*",)), grant("/b")),
    ))
    assert decide(policy, make_identity("svc-1"), "/b")[1] == "b"
    assert not allowed(policy, make_identity("job-1"), "/a")


# -- paths ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/v1/orders", "/v1/orders", True),
        ("/v1/orders", "/v1/orders/", True),        # a trailing slash never changes the answer
        ("/v1/orders", "/v1/orders/7", False),      # a literal pattern is not a prefix
        ("/v1/orders", "/v1/ordersX", False),
        ("/v1/orders", "/V1/orders", False),        # case-sensitive
        ("/v1/orders/*", "/v1/orders/7", True),
        ("/v1/orders/*", "/v1/orders/7/", True),
        ("/v1/orders/*", "/v1/orders", False),      # `*` needs exactly one non-empty segment
        ("/v1/orders/*", "/v1/orders/", False),
        ("/v1/orders/*", "/v1/orders/7/items", False),
        ("/v1/*/items", "/v1/7/items", True),
        ("/v1/*/items", "/v1/7/8/items", False),
        ("/*/*", "/a/b", True),
        ("/*/*", "/a", False),
        ("/v1/orders/**", "/v1/orders", True),      # `**` is zero or more: the prefix itself is covered
        ("/v1/orders/**", "/v1/orders/", True),
        ("/v1/orders/**", "/v1/orders/7", True),
        ("/v1/orders/**", "/v1/orders/7/items/3", True),
        ("/v1/orders/**", "/v1/ordersX", False),
        ("/v1/orders/**", "/v1", False),
        ("/v1/*/history/**", "/v1/7/history", True),
        ("/v1/*/history/**", "/v1/7/history/2026/11", True),
        ("/v1/*/history/**", "/v1/history", False),
        ("/**", "/", True),
        ("/**", "/anything/at/all", True),
        ("/", "/", True),
        ("/", "/a", False),
        ("/caf\u00e9/*", "/caf%C3%A9/1", True),     # non-ASCII patterns match their UTF-8 escapes
        ("/~user/**", "/~user/x", True),
    ],
)
def test_path_patterns(pattern: str, path: str, expected: bool) -> None:
    policy = CompiledPolicy.compile((allow("r", ANYONE, grant(pattern)),))
    assert allowed(policy, make_identity(), path) is expected


def test_several_paths_and_grants_in_one_rule() -> None:
    policy = CompiledPolicy.compile((
        allow("r", ANYONE, grant("/a", "/b/*", hosts=("one.internal",)), grant("/c/**", hosts=("two.internal",))),
    ))
    assert allowed(policy, make_identity(), "/a", host="one.internal")
    assert allowed(policy, make_identity(), "/b/1", host="one.internal")
    assert allowed(policy, make_identity(), "/c/1/2", host="two.internal")
    assert not allowed(policy, make_identity(), "/c/1", host="one.internal")
    assert not allowed(policy, make_identity(), "/a", host="two.internal")


# -- hosts ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("hosts", "host", "expected"),
    [
        (("orders.internal",), "orders.internal", True),
        (("orders.internal",), "ORDERS.Internal", True),
        (("orders.internal",), "orders.internal.", True),
        (("Orders.Internal",), "orders.internal", True),
        (("orders.internal",), "orders.internal.evil", False),
        (("orders.internal",), "xorders.internal", False),
        (("*.example.com",), "api.example.com", True),
        (("*.example.com",), "API.Example.com", True),
        (("*.example.com",), "example.com", False),
        (("*.example.com",), "a.b.example.com", False),
        (("*.example.com",), "api.example.com.evil", False),
        (("*.example.com",), "apiexample.com", False),
        (("a.internal", "*.example.com"), "a.internal", True),
        (("a.internal", "*.example.com"), "x.example.com", True),
        ((), "anything.at.all", True),
    ],
)
def test_hosts(hosts: tuple[str, ...], host: str, expected: bool) -> None:
    policy = CompiledPolicy.compile((allow("r", ANYONE, grant("/**", hosts=hosts)),))
    assert allowed(policy, make_identity(), "/", host=host) is expected


def test_wildcard_host_deny_beats_exact_host_allow() -> None:
    policy = CompiledPolicy.compile((
        allow("exact", ANYONE, grant("/**", hosts=("api.example.com",))),
        deny("zone", ANYONE, grant("/admin/**", hosts=("*.example.com",))),
    ))
    assert decide(policy, make_identity(), "/admin", host="api.example.com")[1] == "zone"
    assert decide(policy, make_identity(), "/x", host="api.example.com")[1] == "exact"


def test_any_host_deny_beats_exact_host_allow() -> None:
    policy = CompiledPolicy.compile((
        allow("exact", ANYONE, grant("/**", hosts=("api.example.com",))),
        deny("global", ANYONE, grant("/admin/**")),
    ))
    assert decide(policy, make_identity(), "/admin/x", host="api.example.com")[1] == "global"
    assert decide(policy, make_identity(), "/admin/x", host="other.example.com")[1] == "global"


# -- methods --------------------------------------------------------------------------------------------------

def test_methods_are_any_of_and_head_is_not_implied_by_get() -> None:
    policy = CompiledPolicy.compile((allow("r", ANYONE, grant("/x", methods=("GET", "POST"))),))
    assert allowed(policy, make_identity(), "/x", method="GET")
    assert allowed(policy, make_identity(), "/x", method="POST")
    assert not allowed(policy, make_identity(), "/x", method="HEAD")
    assert not allowed(policy, make_identity(), "/x", method="DELETE")


def test_request_methods_are_upper_cased_so_a_deny_cannot_be_dodged() -> None:
    policy = CompiledPolicy.compile((
        allow("all", ANYONE, grant("/**")),
        deny("no-delete", ANYONE, grant("/**", methods=("DELETE",))),
    ))
    assert decide(policy, make_identity(), "/x", method="delete")[1] == "no-delete"


def test_empty_methods_match_any_method_including_unlisted_ones() -> None:
    policy = CompiledPolicy.compile((
        allow("get-only", ANYONE, grant("/a", methods=("GET",))),
        allow("any-method", ANYONE, grant("/a/**")),
    ))
    assert decide(policy, make_identity(), "/a", method="GET")[1] == "get-only"
    assert decide(policy, make_identity(), "/a/1", method="GET")[1] == "any-method"
    assert decide(policy, make_identity(), "/a", method="POST")[1] == "any-method"
    assert decide(policy, make_identity(), "/a", method="PROPFIND")[1] == "any-method"


def test_method_specific_and_any_method_rules_on_the_same_wildcard_host() -> None:
    policy = CompiledPolicy.compile((
        allow("exact-get", ANYONE, grant("/a", hosts=("x.example.com",), methods=("GET",))),
        allow("zone-put", ANYONE, grant("/b", hosts=("*.example.com",), methods=("PUT",))),
        allow("zone-any", ANYONE, grant("/c", hosts=("*.example.com",))),
    ))
    identity = make_identity()
    assert allowed(policy, identity, "/a", host="x.example.com")
    assert allowed(policy, identity, "/b", method="PUT", host="x.example.com")
    assert not allowed(policy, identity, "/b", method="GET", host="x.example.com")
    assert allowed(policy, identity, "/c", method="PATCH", host="x.example.com")
    assert allowed(policy, identity, "/c", method="GET", host="y.example.com")
    assert not allowed(policy, identity, "/a", host="y.example.com")


# -- lookups and explanations ---------------------------------------------------------------------------------

def test_rules_and_rule_lookup() -> None:
    rules = (allow("a", ANYONE, grant("/a")), deny("b", ANYONE, grant("/b")))
    policy = CompiledPolicy.compile(rules)
    assert policy.rules == rules
    assert policy.rule("b") is rules[1]
    assert policy.rule("missing") is None


def test_explain_lists_every_covering_rule() -> None:
    policy = CompiledPolicy.compile((
        allow("ops-all", Who(groups=("ops",)), grant("/**")),
        allow("read", ANYONE, grant("/admin/**", methods=("GET",))),
        deny("no-admin", Who(groups=("contractors",)), grant("/admin/**")),
        deny("unrelated", ANYONE, grant("/other")),
    ))
    explanation = policy.explain_http(make_identity(groups=("ops",)), "GET", "h.internal", "/admin/x")
    assert explanation == HttpExplanation(
        decision=explanation.decision, deny_rules=(), allow_rules=("ops-all", "read"), other_identities=("no-admin",)
    )
    assert explanation.summary() == "allowed: matched rule ops-all"

    denied = policy.explain_http(make_identity(groups=("contractors",)), "GET", "h.internal", "/admin/x")
    assert denied.deny_rules == ("no-admin",)
    assert denied.summary() == "denied by rule no-admin"

    nothing = policy.explain_http(make_identity(), "POST", "h.internal", "/admin/x")
    assert nothing.summary() == "denied: no rule matched"
    assert nothing.other_identities == ("no-admin", "ops-all")


def test_rules_for_identity_returns_matching_allow_rules_with_aws() -> None:
    aws = AwsGrant(role_arn="arn:aws:iam::123456789012:role/etl",
                   dynamodb=(DynamoDbGrant(table="orders", actions=("GetItem",)),))
    rules = (
        allow("etl-table", Who(subjects=("svc-etl-*",)), aws=aws),
        allow("other-table", Who(subjects=("svc-web-*",)), aws=aws),
        allow("http-only", Who(subjects=("svc-etl-*",)), grant("/**")),
        allow("etl-both", Who(groups=("data-eng",)), grant("/x"), aws=aws),
    )
    policy = CompiledPolicy.compile(rules)
    found = policy.rules_for_identity(make_identity("svc-etl-1", groups=("data-eng",)))
    assert [r.id for r in found] == ["etl-table", "etl-both"]
    assert policy.rules_for_identity(make_identity("nobody")) == ()


# -- compile errors -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("rule", "fragment"),
    [
        (allow("r", ANYONE, grant("/a/**/b")), "'**' may only be the last segment"),
        (allow("r", ANYONE, grant("/a/*.json")), "must be whole path segments"),
        (allow("r", ANYONE, grant("/a/x**")), "must be whole path segments"),
        (allow("r", ANYONE, grant("relative")), "must start with '/'"),
        (allow("r", ANYONE, grant("/a;b")), "path parameters"),
        (allow("r", ANYONE, grant("/a/../..")), "climbs above the root"),
        (allow("r", ANYONE, grant()), "at least one path"),
        (allow("r", ANYONE, grant("/a", hosts=("*",))), "leave hosts empty"),
        (allow("r", ANYONE, grant("/a", hosts=("a.*.com",))), "whole leading label"),
        (allow("r", ANYONE, grant("/a", hosts=("*example.com",))), "whole leading label"),
        (allow("r", ANYONE, grant("/a", hosts=("",))), "empty host"),
        (allow("r", ANYONE, grant("/a", methods=("*",))), "leave methods empty"),
        (allow("r", Who(), grant("/a")), "matches nobody"),
    ],
)
def test_compile_refuses_unusable_rules(rule: Rule, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        CompiledPolicy.compile((rule,))
    (problem,) = caught.value.problems
    assert fragment in problem.message
    assert (problem.file, problem.line, problem.rule_id) == ("policies/test.yaml", 1, "r")


def test_compile_reports_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        CompiledPolicy.compile((
            allow("a", ANYONE, grant("/x/**/y")),
            deny("b", ANYONE, grant("/x", hosts=("*",))),
            allow("a", ANYONE, grant("/ok")),
        ))
    assert sorted((p.rule_id, p.message.split(":")[0]) for p in caught.value.problems) == [
        ("a", "duplicate rule id"),
        ("a", "path pattern '/x/**/y'"),
        ("b", "host '*' is not a pattern"),
    ]


# -- the index agrees with a brute-force reference -------------------------------------------------------------

def _reference_path(pattern: str, path: str) -> bool:
    want = [s for s in pattern.split("/") if s]
    have = [s for s in path.split("/") if s]
    if want and want[-1] == "**":
        want = want[:-1]
        if len(have) < len(want):
            return False
        have = have[: len(want)]
    return len(want) == len(have) and all(w == "*" or w == h for w, h in zip(want, have))


def _reference_grant(g: HttpGrant, method: str, host: str, path: str) -> bool:
    host_ok = not g.hosts or any(
        h == host or (h.startswith("*.") and "." in host and host.split(".", 1)[1] == h[2:]) for h in g.hosts
    )
    return host_ok and (not g.methods or method in g.methods) and any(_reference_path(p, path) for p in g.paths)


def _reference_who(who: Who, identity: Identity) -> bool:
    def claim_ok(name: str, values: tuple[str, ...]) -> bool:
        value = identity.claims.get(name)
        return isinstance(value, str) and value in values

    def contains_ok(name: str, values: tuple[str, ...]) -> bool:
        value = identity.claims.get(name)
        return isinstance(value, list) and any(isinstance(v, str) and v in values for v in value)

    return (
        (not who.issuers or identity.issuer in who.issuers)
        and (not who.subjects or any(fnmatch.fnmatchcase(identity.subject, s) for s in who.subjects))
        and (not who.groups or bool(set(who.groups) & set(identity.groups)))
        and (not who.client_ids or identity.client_id in who.client_ids)
        and all(claim_ok(n, v) for n, v in who.claims.items())
        and all(contains_ok(n, v) for n, v in who.claims_contain.items())
    )


def _reference_decide(rules: list[Rule], identity: Identity, method: str, host: str, path: str) -> str | None:
    hits = [r for r in rules if _reference_who(r.who, identity)
            and any(_reference_grant(g, method, host, path) for g in r.http)]
    denies = [r for r in hits if r.effect is Effect.DENY]
    chosen = denies or hits
    return chosen[0].id if chosen else None


def test_compiled_index_agrees_with_brute_force_on_generated_policies() -> None:
    rng = random.Random(42)
    hosts = ["a.zone1.internal", "b.zone1.internal", "c.zone2.internal", "solo"]
    segments = ["v1", "orders", "items", "7", "x", "y"]
    methods = ["GET", "POST", "HEAD", "DELETE"]

    def pattern() -> str:
        parts = [rng.choice(segments + ["*"]) for _ in range(rng.randint(0, 3))]
        if rng.random() < 0.25:
            parts.append("**")
        return "/" + "/".join(parts)

    def who() -> Who:
        roll = rng.random()
        if roll < 0.1:
            return ANYONE
        if roll < 0.5:
            return Who(subjects=(rng.choice(["svc-*", "svc-1", "job-?"]),))
        if roll < 0.8:
            return Who(groups=(rng.choice(["g1", "g2", "g3"]),))
        if roll < 0.9:
            return Who(claims=claims(tenant=(rng.choice(["t1", "t2"]),)))
        return Who(claims_contain=claims(tenant=(rng.choice(["t1", "t3"]),)))

    rules: list[Rule] = []
    for n in range(80):
        grants = tuple(
            HttpGrant(
                paths=tuple(pattern() for _ in range(rng.randint(1, 2))),
                hosts=tuple(rng.sample(hosts + ["*.zone1.internal", "*.zone2.internal"], rng.randint(0, 2))),
                methods=tuple(rng.sample(methods, rng.randint(0, 2))),
            )
            for _ in range(rng.randint(1, 2))
        )
        effect = Effect.DENY if rng.random() < 0.2 else Effect.ALLOW
        rules.append(Rule(id=f"r{n}", who=who(), effect=effect, http=grants))
    policy = CompiledPolicy.compile(rules)

    outcomes: Counter[tuple[str, ...]] = Counter()
    for _ in range(4000):
        identity = make_identity(
            rng.choice(["svc-1", "svc-2", "job-a", "web"]),
            groups=tuple(rng.sample(["g1", "g2", "g3"], rng.randint(0, 2))),
            claims={"tenant": rng.choice(["t1", "t2", ["t1", "t3"], 5])},
        )
        method, host = rng.choice(methods), rng.choice(hosts + ["d.zone1.internal", "zone1.internal"])
        path = "/" + "/".join(rng.choice(segments) for _ in range(rng.randint(0, 4)))
        expected = _reference_decide(rules, identity, method, host, path)
        decision = policy.decide_http(identity, method, host, path)
        assert decision.rule_id == expected, (method, host, path)
        assert decision.allowed == (expected is not None and rules[int(expected[1:])].effect is Effect.ALLOW)
        explained = policy.explain_http(identity, method, host, path)
        assert (explained.deny_rules or explained.allow_rules or (None,))[0] == decision.rule_id
        outcomes[decision.reasons] += 1
    assert set(outcomes) == {("matched",), ("denied_by_rule",), ("no_matching_rule",)}
    assert min(outcomes.values()) > 200  # every kind of answer is exercised, not just one
