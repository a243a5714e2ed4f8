"""`idgate test` and `idgate diff`: a policy's unit tests (proxy.policy.testing) and what a change does to
access (proxy.policy.diff), for a policy repository's CI and for a change under review."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from proxy.config import load_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_parser(sub: Any) -> None:
    test = sub.add_parser("test", help="run the policy tests (YAML cases beside the policies) against the policies",
                          description="Each case names an identity, a request (http) or an AWS ask (aws), and the "
                                      "decision and deciding rule it expects.  Exit 0 when all pass, 1 when one "
                                      "fails, 2 when a policy or test file is invalid.")
    test.add_argument("paths", nargs="*", type=Path, metavar="TESTS",
                      help="test files or directories (default: the policies directory's tests/)")
    test.add_argument("--policies", type=Path, help="the policies directory (default: policies_dir of --config, "
                                                    "else ./policies)")
    test.add_argument("--config", "-c", type=Path, help="idgate.yaml, for its policies_dir")
    test.add_argument("--verbose", "-v", action="store_true", help="also list the cases that pass")
    diff = sub.add_parser("diff", help="the access a policy change grants and takes away, per identity",
                          description="Compares two policy directories (e.g. main's checkout and a branch's).  "
                                      "Exit 0 when access is the same, 1 when it changes, 2 when a policy is invalid.")
    diff.add_argument("old", type=Path, metavar="OLD")
    diff.add_argument("new", type=Path, metavar="NEW")
    diff.add_argument("--format", choices=("text", "json"), default="text")


def cmd_test(args: argparse.Namespace) -> int:
    from proxy.policy.store import compile_directory
    from proxy.policy.testing import load_cases, run_case, test_files

    policies = args.policies or (load_config(args.config, offline=True).policies_dir if args.config else Path("policies"))
    policy = compile_directory(policies)
    where = args.paths or [policies / "tests"]
    files = test_files(p for p in where if args.paths or p.is_dir())
    if not files:
        print(f"idgate: no test files in {', '.join(map(str, where))}", file=sys.stderr)
        return EXIT_USAGE
    outcomes = [run_case(policy, case) for case in load_cases(files)]
    failed = [o for o in outcomes if not o.passed]
    for outcome in outcomes:
        if not outcome.passed:
            print(f"FAIL {outcome.describe()}")
        elif args.verbose:
            print(f"ok   {outcome.case.file}:{outcome.case.line}: {outcome.case.name}")
    print(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed ({len(files)} file(s), "
          f"{len(policy.rules)} rule(s) from {policies})")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    from proxy.policy.diff import diff
    from proxy.policy.store import compile_directory

    change = diff(compile_directory(args.old), compile_directory(args.new))
    if args.format == "json":
        print(json.dumps(dataclasses.asdict(change), indent=2))
        return EXIT_FAILED if not change.empty else EXIT_OK
    print(f"rules: {len(change.added)} added, {len(change.removed)} removed, {len(change.changed)} changed")
    for rule_id, where in change.added:
        print(f"  + {rule_id}  ({where})")
    for rule_id, where in change.removed:
        print(f"  - {rule_id}  (was {where})")
    for rule in change.changed:
        print(f"  ~ {rule.rule_id}  ({rule.where}): {rule.direction}")
        for field in rule.changes:
            if field.field == "grants":
                print("\n".join([*(f"      grants: + {g}" for g in field.after), *(f"      grants: - {g}" for g in field.before)]))
            else:
                print(f"      {field.field}: {list(field.before)} -> {list(field.after)} ({field.direction})")
    print(f"access: {len(change.access)} identit{'y' if len(change.access) == 1 else 'ies'} changed")
    for person in change.access:
        print(f"  {person.label}")
        print("\n".join([*(f"      {_gained(g)}" for g in person.gained), *(f"      {_lost(g)}" for g in person.lost)]))
    return EXIT_FAILED if not change.empty else EXIT_OK


def _gained(grant: str) -> str:
    return f"now denied: {grant.removeprefix('deny ')}" if grant.startswith("deny ") else f"+ {grant}"


def _lost(grant: str) -> str:
    # A deny rule that no longer applies is access gained: say so in words, not with a minus sign.
    return f"no longer denied: {grant.removeprefix('deny ')}" if grant.startswith("deny ") else f"- {grant}"
