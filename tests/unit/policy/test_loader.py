"""load_policies: the shipped policies load and fit the demo identities; every bad input is reported with
file, line and rule id, all at once.

Bad-input fixtures in tests/data/policies mark each expected problem on its line with
`# ERROR(rule-id): <text>` (or `# ERROR: <text>` for problems outside any rule); `{dir}` stands for the
fixture directory.  A test passes only if exactly those problems are reported.
"""

from __future__ import annotations

import os
import re
import textwrap
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from proxy.core.errors import ConfigError, ConfigProblem
from proxy.policy.loader import load_policies, path_pattern_problem, policy_files
from proxy.policy.rules import AwsGrant, DynamoDbGrant, Effect, HttpGrant, Rule, Who
from tests.harness.paths import POLICIES, TEST_DATA

DATA = TEST_DATA / "policies"
SHIPPED = POLICIES
DEMO_ISSUER = "http://127.0.0.1:9400"
_MARK = re.compile(r"ERROR(?:\(([^)]*)\))?:\s*(.*?)\s*(?=ERROR|$)")


def expected_marks(directory: Path) -> list[tuple[Path, int, str | None, str]]:
    """(file, line, rule id, text) for every `# ERROR(rule): text` marker in a fixture directory."""
    marks = []
    for path in sorted(directory.iterdir()):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if "# ERROR" in line:
                comment = line.split("# ", 1)[1].replace("{dir}", str(directory))
                marks += [(path, number, m.group(1), m.group(2)) for m in _MARK.finditer(comment)]
    return marks


def assert_exactly(problems: tuple[ConfigProblem, ...], directory: Path) -> None:
    remaining = list(problems)
    for path, line, rule_id, text in expected_marks(directory):
        match = next((p for p in remaining
                      if p.file == str(path) and p.line == line and text in p.message), None)
        assert match is not None, f"no problem at {path.name}:{line} containing {text!r} in {remaining}"
        assert match.rule_id == rule_id
        assert str(match).startswith(f"{path}:{line}:" + (f" [rule {rule_id}]" if rule_id else ""))
        remaining.remove(match)
    assert remaining == [], f"unexpected problems: {remaining}"


def load_bad(directory: Path) -> tuple[ConfigProblem, ...]:
    with pytest.raises(ConfigError) as info:
        load_policies(directory)
    return info.value.problems


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


# --- the shipped policies ---------------------------------------------------------------------------

def test_shipped_policies_load() -> None:
    rules = {rule.id: rule for rule in load_policies(SHIPPED)}
    assert set(rules) == {"nobody-touches-admin", "etl-read-orders", "etl-orders-table", "etl-orders-gateway",
                          "data-eng-read-reports", "operators-use-the-web-app"}
    gateway = rules["etl-orders-gateway"].aws
    assert gateway is not None and gateway.gateway and not gateway.web_identity
    assert rules["etl-read-orders"] == Rule(
        id="etl-read-orders",
        who=Who(issuers=(DEMO_ISSUER,), subjects=("svc-etl-*",), groups=("data-eng",),
                claims={"tenant": ("acme",)}),
        http=(HttpGrant(hosts=("orders.internal",), methods=("GET", "HEAD"),
                        paths=("/v1/orders", "/v1/orders/**")),),
        file=str(SHIPPED / "orders.yaml"), line=4)
    assert rules["etl-orders-table"].aws == AwsGrant(
        role_arn="arn:aws:iam::123456789012:role/etl",
        dynamodb=(DynamoDbGrant(table="orders", actions=("GetItem", "Query", "PutItem", "UpdateItem"),
                                leading_keys=("${claims.tenant}",), attributes=("pk", "sk", "status", "amount")),))
    deny = rules["nobody-touches-admin"]
    assert deny.effect is Effect.DENY and deny.who == Who(any=True) and deny.http[0].paths[-1] == "/admin/**"
    reports = rules["data-eng-read-reports"].http[0]
    assert (reports.hosts, reports.methods) == (("reports.internal",), ("GET",))
    assert "/v1/reports/**" in reports.paths


def _who_matches(who: Who, subject: str, groups: tuple[str, ...], claims: dict[str, str]) -> bool:
    """The documented `who` semantics (DESIGN §3), enough to check the shipped files fit the demo."""
    return who.any or (
        (not who.issuers or DEMO_ISSUER in who.issuers)
        and (not who.subjects or any(fnmatchcase(subject, s) for s in who.subjects))
        and (not who.groups or bool(set(groups) & set(who.groups)))
        and all(claims.get(name) in values for name, values in who.claims.items()))


def test_shipped_policies_fit_the_demo_identities() -> None:
    rules = load_policies(SHIPPED)
    etl = {r.id for r in rules if _who_matches(r.who, "svc-etl-7", ("data-eng",), {"tenant": "acme"})}
    web = {r.id for r in rules if _who_matches(r.who, "svc-web-1", ("web",), {})}
    assert etl == {"etl-read-orders", "etl-orders-table", "etl-orders-gateway", "data-eng-read-reports",
                   "nobody-touches-admin"}
    assert web == {"nobody-touches-admin"}   # svc-web-1 may not read orders (or anything else)


# --- bad inputs: exact file, line and rule, all at once ----------------------------------------------

@pytest.mark.parametrize("name", ["invalid", "three-mistakes", "duplicate-ids", "syntax", "duplicate-key"])
def test_bad_policies_report_every_marked_problem(name: str) -> None:
    directory = DATA / name
    assert expected_marks(directory), "a bad fixture must mark at least one expected problem"
    assert_exactly(load_bad(directory), directory)


def test_three_mistakes_give_three_problems() -> None:
    problems = load_bad(DATA / "three-mistakes")
    assert [(p.line, p.rule_id) for p in problems] == [(4, "etl-read-orders"), (8, "etl-read-orders"), (10, "web-read")]


def test_duplicate_rule_id_across_files_names_both_places() -> None:
    first = DATA / "duplicate-ids" / "a-orders.yaml"
    second = DATA / "duplicate-ids" / "b-reports.yaml"
    problem = load_bad(DATA / "duplicate-ids")[0]
    assert (problem.file, problem.line, problem.rule_id) == (str(second), 5, "etl-read-orders")
    assert f"{first}:2" in problem.message


def test_one_bad_file_does_not_hide_the_problems_of_another() -> None:
    problems = load_bad(DATA / "syntax")
    assert [Path(p.file).name for p in problems] == ["10-broken.yaml", "20-fine-but-one-mistake.yaml"]


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_unreadable_policy_file_is_named(tmp_path: Path, kind: str) -> None:
    # chmod 000 does not stop root (tests may run as root); a directory or a FIFO is unreadable for anyone.
    write(tmp_path, "a.yaml", "rules: [{id: a, who: {any: true}, http: [{paths: [/]}]}]\n")
    bad = tmp_path / "b.yaml"
    os.mkdir(bad) if kind == "directory" else os.mkfifo(bad)
    (problem,) = load_bad(tmp_path)
    assert problem.file == str(bad) and problem.line is None and "cannot read" in problem.message


@pytest.mark.parametrize(("text", "line", "message"), [
    ("", None, "file is empty; write 'rules: []'"),
    ("- id: x\n", 1, "expected a mapping with the key 'rules'"),
    ("other: []\n", 1, "unknown top-level key 'other'"),
    ("rules: {id: x}\n", 1, "rules: expected a list"),
    ("rules: []\nrules: []\n", 2, "duplicate key 'rules'"),
])
def test_file_shape_problems(tmp_path: Path, text: str, line: int | None, message: str) -> None:
    path = write(tmp_path, "p.yaml", text)
    problems = load_bad(tmp_path)
    assert (problems[0].file, problems[0].line) == (str(path), line)
    assert message in problems[0].message


def test_missing_rules_key_is_reported(tmp_path: Path) -> None:
    write(tmp_path, "p.yaml", "# rules forgotten\n{}\n")
    assert [(p.line, p.message) for p in load_bad(tmp_path)] == [(2, "missing the top-level key 'rules'")]


# --- good inputs and spelling choices -----------------------------------------------------------------

def test_empty_directory_and_empty_rule_list_mean_no_rules(tmp_path: Path) -> None:
    assert load_policies(tmp_path) == ()
    write(tmp_path, "none.yaml", "rules: []\n")
    assert load_policies(tmp_path) == ()


def test_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="policy directory does not exist"):
        load_policies(tmp_path / "nope")
    write(tmp_path, "file.yaml", "rules: []\n")
    with pytest.raises(ConfigError):
        load_policies(tmp_path / "file.yaml")


def test_files_are_read_sorted_and_only_yaml(tmp_path: Path) -> None:
    rule = "rules: [{{id: {0}, who: {{any: true}}, http: [{{paths: [/{0}]}}]}}]\n"
    write(tmp_path, "b.yml", rule.format("b"))
    write(tmp_path, "a.yaml", rule.format("a"))
    write(tmp_path, "c.yaml.bak", "not: yaml: at all")
    write(tmp_path, "notes.json", "{")
    (tmp_path / ".#a.yaml").symlink_to(tmp_path / "editor-lock")   # emacs lock file: dangling, hidden
    assert [p.name for p in policy_files(tmp_path)] == ["a.yaml", "b.yml"]
    rules = load_policies(tmp_path)
    assert [(r.id, Path(r.file).name, r.line) for r in rules] == [("a", "a.yaml", 1), ("b", "b.yml", 1)]


def test_who_takes_a_string_or_a_list(tmp_path: Path) -> None:
    write(tmp_path, "p.yaml", """
        rules:
          - id: scalar-spelling
            who:
              issuer: http://127.0.0.1:9400
              subject: "svc-*"
              groups: data-eng
              client_id: [etl, batch]
              claims: {tenant: acme, region: [eu, us]}
            http: [{paths: ["/"]}]
    """)
    (rule,) = load_policies(tmp_path)
    assert rule.who == Who(issuers=("http://127.0.0.1:9400",), subjects=("svc-*",), groups=("data-eng",),
                           client_ids=("etl", "batch"), claims={"tenant": ("acme",), "region": ("eu", "us")})
    assert rule.effect is Effect.ALLOW and rule.line == 3


def test_claims_contain_is_its_own_condition(tmp_path: Path) -> None:
    write(tmp_path, "p.yaml", """
        rules:
          - id: any-of-my-tenants
            who: {claims_contain: {tenants: [acme, globex]}}
            http: [{paths: ["/"]}]
    """)
    (rule,) = load_policies(tmp_path)
    assert rule.who == Who(claims_contain={"tenants": ("acme", "globex")}) and rule.who.has_conditions()


def test_hosts_are_lower_cased_and_wildcards_allowed(tmp_path: Path) -> None:
    write(tmp_path, "p.yaml", """
        rules:
          - id: hosts
            who: {any: true}
            http: [{hosts: [Orders.Internal, "*.Example.com", 10.0.0.7], methods: [GET, PROPFIND], paths: ["/"]}]
    """)
    (rule,) = load_policies(tmp_path)
    assert rule.http[0].hosts == ("orders.internal", "*.example.com", "10.0.0.7")
    assert rule.http[0].methods == ("GET", "PROPFIND")


def test_aws_grant_with_every_field(tmp_path: Path) -> None:
    write(tmp_path, "p.yaml", """
        rules:
          - id: etl-table
            who: {subject: svc-etl-*}
            aws:
              role_arn: arn:aws-cn:iam::123456789012:role/team/etl
              web_identity: true
              duration: 43200
              dynamodb:
                - table: orders.v2
                  actions: [Query, PartiQLSelect, DescribeTable]
                  indexes: [by-status]
                  leading_keys: ["${claims.tenant}", shared, "$literal"]
                  attributes: [pk]
    """)
    (rule,) = load_policies(tmp_path)
    assert rule.aws == AwsGrant(
        role_arn="arn:aws-cn:iam::123456789012:role/team/etl", web_identity=True, duration=43200,
        dynamodb=(DynamoDbGrant(table="orders.v2", actions=("Query", "PartiQLSelect", "DescribeTable"),
                                indexes=("by-status",), leading_keys=("${claims.tenant}", "shared", "$literal"),
                                attributes=("pk",)),))


@pytest.mark.parametrize(("pattern", "problem"), [
    ("/", None), ("/v1/orders", None), ("/v1/orders/", None), ("/v1/*/items", None), ("/v1/**", None),
    ("/**", None), ("/v1/*/**", None),
    ("", "must start with '/'"), ("v1", "must start with '/'"),
    ("/a//b", "must not contain '//'"), ("/a/./b", "'.' or '..'"), ("/a/..", "'.' or '..'"),
    ("/a?b", "must not contain '?'"), ("/a#b", "must not contain '?'"), ("/a%2Fb", "must not contain '?'"),
    ("/a;b", "must not contain '?'"), ("/a\\b", "must not contain '?'"), ("/a b", "must not contain '?'"),
    ("/a\x00b", "must not contain '?'"), ("/**/a", "only allowed as the last segment"),
    ("/a*", "must be whole segments"), ("/***", "must be whole segments"), ("/a/**b", "must be whole segments"),
])
def test_path_patterns(pattern: str, problem: str | None) -> None:
    found = path_pattern_problem(pattern)
    assert found is None if problem is None else (found is not None and problem in found)
