"""Policy unit tests (`idgate test`): YAML files of cases (an identity, a request or an AWS ask, the
expected decision and deciding rule) run against the compiled policy with the server's own engine.

    tests:
      - name: etl reads its orders
        identity: {issuer: http://127.0.0.1:9400, subject: svc-etl-7, groups: [data-eng], claims: {tenant: acme}}
        http: {method: GET, host: orders.internal, path: /v1/orders/7}
        expect: {decision: allow, rule: etl-read-orders}
      - name: etl takes the orders role
        identity: {issuer: http://127.0.0.1:9400, subject: svc-etl-7, claims: {tenant: acme}}
        aws: {role: etl}
        expect: {decision: allow, rule: etl-orders-table, role_arn: "arn:aws:iam::123456789012:role/etl"}

A case's identity is what policy sees (issuer, subject, groups, client id, string claims), so a test needs no
issuer config.  Problems in a test file are reported like policy problems: file, line, all at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import yaml

from proxy.config.decoder import Decoder, Schema, Spot, line_of, read_yaml
from proxy.core.errors import ConfigError, ConfigProblem, IdgateError
from proxy.core.model import Decision, Identity
from proxy.core.paths import normalize_path
from proxy.core.reasons import Reason
from proxy.policy.engine import CompiledPolicy
from proxy.policy.session_policy import choose_role

DECISIONS = ("allow", "deny")


@dataclass(frozen=True, slots=True)
class CaseIdentity:
    issuer: str
    subject: str
    groups: tuple[str, ...] = ()
    client_id: str | None = None
    claims: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def identity(self) -> Identity:
        claims = {**self.claims, "iss": self.issuer, "sub": self.subject, "groups": list(self.groups)}
        return Identity(self.issuer, self.subject, (), self.client_id, self.groups, time.time() + 300,
                        MappingProxyType(claims))


@dataclass(frozen=True, slots=True)
class HttpAsk:
    path: str
    method: str = "GET"
    host: str = ""


@dataclass(frozen=True, slots=True)
class AwsAsk:
    role: str | None = None            # a role name or ARN, as a worker's ?role= names it


@dataclass(frozen=True, slots=True)
class Expect:
    decision: str
    rule: str | None = None            # the deciding rule (a deny rule, for denied_by_rule)
    reason: str | None = None          # e.g. no_matching_rule, denied_by_rule, ambiguous_role
    role_arn: str | None = None        # aws: the role granted


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    identity: CaseIdentity
    expect: Expect
    http: HttpAsk | None = None
    aws: AwsAsk | None = None
    file: str = ""
    line: int = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    case: Case
    decision: str
    rule: str | None
    reason: str
    role_arn: str | None = None
    rule_source: str | None = None     # file:line of the deciding rule

    @property
    def passed(self) -> bool:
        expect = self.case.expect
        return (self.decision == expect.decision and (expect.rule is None or expect.rule == self.rule)
                and (expect.reason is None or expect.reason == self.reason)
                and (expect.role_arn is None or expect.role_arn == self.role_arn))

    def describe(self) -> str:
        case, expect = self.case, self.case.expect
        wanted = " ".join(p for p in (expect.decision, f"by {expect.rule}" if expect.rule else "",
                                      f"({expect.reason})" if expect.reason else "",
                                      f"role {expect.role_arn}" if expect.role_arn else "") if p)
        got = " ".join(p for p in (self.decision, f"by {self.rule}" if self.rule else "", f"({self.reason})",
                                   f"role {self.role_arn}" if self.role_arn else "") if p)
        where = f" [rule at {self.rule_source}]" if self.rule_source else ""
        return f"{case.file}:{case.line}: {case.name}: expected {wanted}, got {got}{where}"


def _check_case(case: Case, spot: Spot) -> Case:
    if (case.http is None) == (case.aws is None):
        spot.report("a test asks exactly one of http or aws")
    if case.expect.decision not in DECISIONS:
        spot.child("expect").report("must be allow or deny", "decision")
    if case.expect.reason is not None and case.expect.reason not in {r.value for r in Reason}:
        spot.child("expect").report("is not a reason code idgate gives", "reason")
    return case


_SCHEMA = Schema(
    one_or_many=frozenset({(CaseIdentity, "groups")}),
    internal=frozenset({(Case, "file"), (Case, "line")}),
    validators=MappingProxyType({Case: _check_case}),
)


def test_files(paths: Iterable[Path]) -> list[Path]:
    """The test files of `paths`: files as given, directories' *.yaml / *.yml (not starting with '.')."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith("."))
        else:
            found.append(path)
    return found


def load_cases(files: Iterable[Path]) -> list[Case]:
    problems: list[ConfigProblem] = []
    cases: list[Case] = []
    for path in files:
        try:
            node = read_yaml(path)
        except ConfigError as exc:
            problems += exc.problems
            continue
        decoder = Decoder(path, _SCHEMA)
        for i, item in enumerate(_items(decoder, node)):
            case = decoder.decode(item, Case, f"tests[{i}]", {"file": str(path), "line": line_of(item)})
            if case is not None:
                cases.append(case)
        problems += decoder.sorted_problems()
    if problems:
        raise ConfigError(problems)
    return cases


def _items(decoder: Decoder, node: yaml.Node | None) -> list[yaml.Node]:
    if not isinstance(node, yaml.MappingNode) or [getattr(k, "value", None) for k, _ in node.value] != ["tests"] \
            or not isinstance(node.value[0][1], yaml.SequenceNode):
        decoder.report(line_of(node) if node is not None else None, "a test file holds one key, tests: a list")
        return []
    return list(node.value[0][1].value)


def run_case(policy: CompiledPolicy, case: Case) -> Outcome:
    """The case decided by the same engine calls the server makes."""
    identity = case.identity.identity()
    if case.http is not None:
        try:
            path = normalize_path(case.http.path)
        except IdgateError as err:
            return Outcome(case, "deny", None, err.reason.value)
        decision = policy.decide_http(identity, case.http.method, case.http.host.lower(), path)
        return _outcome(policy, case, decision)
    assert case.aws is not None
    try:
        choice = choose_role(policy.rules_for_identity(identity), case.aws.role)
    except IdgateError as err:
        return Outcome(case, "deny", None, err.reason.value)
    rule_id = choice.rule_ids[0]
    return Outcome(case, "allow", rule_id, Reason.MATCHED.value, choice.role_arn, _source(policy, rule_id))


def _outcome(policy: CompiledPolicy, case: Case, decision: Decision) -> Outcome:
    return Outcome(case, "allow" if decision.allowed else "deny", decision.rule_id, decision.reasons[0].value,
                   rule_source=_source(policy, decision.rule_id))


def _source(policy: CompiledPolicy, rule_id: str | None) -> str | None:
    rule = policy.rule(rule_id) if rule_id else None
    return f"{rule.file}:{rule.line}" if rule else None
