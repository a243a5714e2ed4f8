"""`idgate test`: the policy's own unit tests (proxy.policy.testing), run by the server's engine; for a
policy repository's CI as much as for a change under review."""

from __future__ import annotations

import argparse
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
