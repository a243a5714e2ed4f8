"""`idgate test`: the policy's unit tests, run as a policy repository's CI would run them (the real loader
and engine, a real process): the shipped examples pass, a widened or narrowed rule fails the case that
guards it with both file:lines, and a broken test file is reported at its lines."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.harness.paths import POLICIES, REPO


def idgate_test(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", "test", *map(str, args)], capture_output=True, text=True,
                          timeout=60, check=False, cwd=REPO)


def copy_of_policies(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target


def test_the_shipped_example_tests_pass():
    done = idgate_test("--policies", "policies")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("11 passed, 0 failed (1 file(s), 6 rule(s) from policies)")
    assert "Traceback" not in done.stderr


def test_a_widened_rule_fails_the_case_that_guards_it(tmp_path):
    policies = copy_of_policies(tmp_path)
    orders = policies / "orders.yaml"
    orders.write_text(orders.read_text().replace("methods: [GET, HEAD]", "methods: [GET, HEAD, POST]"))
    done = idgate_test("--policies", policies)
    assert done.returncode == 1
    failures = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert failures == [
        f"FAIL {policies}/tests/demo.yaml:9: an ETL job may not write orders over HTTP: expected deny "
        f"(no_matching_rule), got allow by etl-read-orders (matched) [rule at {orders}:4]"]


def test_a_narrowed_rule_fails_too(tmp_path):
    policies = copy_of_policies(tmp_path)
    people = policies / "people.yaml"
    people.write_text(people.read_text().replace("methods: [GET, HEAD, POST]", "methods: [GET, HEAD]"))
    done = idgate_test("--policies", policies)
    assert done.returncode == 1
    assert "demo.yaml:39: an operator uses the web app with a browser: expected allow by operators-use-the-web-app, " \
           "got deny (no_matching_rule)" in done.stdout


def test_a_broken_test_file_is_reported_at_its_lines(tmp_path):
    cases = tmp_path / "cases.yaml"
    cases.write_text(textwrap.dedent("""\
        tests:
          - name: both kinds
            identity: {issuer: http://127.0.0.1:9400, subject: a}
            http: {path: /x}
            aws: {role: etl}
            expect: {decision: allow}
          - name: a typo
            identity: {issuer: http://127.0.0.1:9400, subject: a, gropus: [x]}
            http: {path: /x}
            expect: {decision: maybe, reason: because}
        """))
    done = idgate_test("--policies", POLICIES, cases)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"{cases}:2: tests[0]: a test asks exactly one of http or aws" in done.stderr
    assert f"{cases}:8: tests[1].identity.gropus: unknown key; did you mean 'groups'?" in done.stderr
    assert f"{cases}:10: tests[1].expect.decision: must be allow or deny" in done.stderr
    assert f"{cases}:10: tests[1].expect.reason: is not a reason code idgate gives" in done.stderr


def test_no_test_files_is_a_usage_error(tmp_path):
    (tmp_path / "policies").mkdir()
    done = idgate_test("--policies", tmp_path / "policies")
    assert done.returncode == 2 and "no test files" in done.stderr


def idgate_diff(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", "diff", *map(str, args)], capture_output=True, text=True,
                          timeout=60, check=False, cwd=REPO)


def test_diff_of_a_policy_with_itself_is_no_change():
    done = idgate_diff("policies", "policies")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["rules: 0 added, 0 removed, 0 changed", "access: 0 identities changed"]


def test_diff_states_a_change_as_who_gains_what(tmp_path):
    policies = copy_of_policies(tmp_path)
    orders = policies / "orders.yaml"
    orders.write_text(orders.read_text().replace("methods: [GET, HEAD]", "methods: [GET, HEAD, POST]"))
    (policies / "admin-deny.yaml").unlink()
    done = idgate_diff("policies", policies)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "rules: 0 added, 1 removed, 1 changed"
    assert "  - nobody-touches-admin  (was policies/admin-deny.yaml:3)" in lines
    assert f"  ~ etl-read-orders  ({orders}:4): wider" in lines
    assert "      grants: + allow POST orders.internal /v1/orders/**" in lines
    etl = lines.index("  issuer=http://127.0.0.1:9400 subject=svc-etl-* groups=data-eng claims.tenant=acme")
    assert lines[etl + 1:etl + 5] == ["      + allow POST orders.internal /v1/orders",
                                      "      + allow POST orders.internal /v1/orders/**",
                                      "      no longer denied: * * /admin", "      no longer denied: * * /admin/**"]
    as_json = json.loads(idgate_diff("--format", "json", "policies", policies).stdout)
    assert as_json["removed"] == [["nobody-touches-admin", "policies/admin-deny.yaml:3"]]


def test_diff_of_a_broken_policy_names_its_line(tmp_path):
    policies = copy_of_policies(tmp_path)
    (policies / "orders.yaml").write_text("rules:\n  - id: x\n    who: {any: true}\n    http: [{paths: [nope]}]\n")
    done = idgate_diff("policies", policies)
    assert done.returncode == 2 and f"{policies}/orders.yaml:4" in done.stderr and "Traceback" not in done.stderr
