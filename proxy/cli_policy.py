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
    diff.add_argument("--audit", nargs="+", metavar="SOURCE",
                      help="also the identities these audit sources saw (their issuer, subject, client and groups; "
                           "claims are not in the audit)")
    diff.add_argument("--since", help="with --audit: ISO 8601 date or timestamp, or a duration ago (24h, 30d)")
    suggest = sub.add_parser("suggest", help="propose the narrowest rules for the traffic an audit window allowed, "
                                             "and list the rules and grants it never used",
                             description="Reads the allowed HTTP decisions of the window and prints a policy file "
                                         "(stdout) that allows exactly that traffic per identity, with the evidence "
                                         "for each path; the rules and grants of --policies that no record used go "
                                         "to stderr.  It proposes; a person applies.")
    suggest.add_argument("--audit", nargs="+", required=True, metavar="SOURCE",
                         help="audit segments or sinks, as for idgate audit query")
    suggest.add_argument("--since", help="ISO 8601 date or timestamp, or a duration ago (24h, 30d)")
    suggest.add_argument("--until", help="as --since")
    suggest.add_argument("--policies", type=Path, help="the current policies, to report what the window did not use")
    suggest.add_argument("--min-distinct", type=int, default=3, metavar="N",
                         help="values seen at one path position before it becomes '*' (default: %(default)s)")


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

    seen = _audited_identities(args.audit, args.since) if args.audit else []
    if seen is None:
        return EXIT_USAGE
    change = diff(compile_directory(args.old), compile_directory(args.new), seen)
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


MAX_AUDITED_IDENTITIES = 10_000


def _audited_identities(sources: list[str], since: str | None) -> list[Any] | None:
    """The distinct identities of the decision records in `sources` (at most MAX_AUDITED_IDENTITIES), or None
    after saying why they cannot be read."""
    import time
    from datetime import UTC, datetime
    from types import MappingProxyType

    from proxy.audit.query import Filters, parse_when
    from proxy.audit.search import Search
    from proxy.audit.sources import SourceError, boto3_clients, open_source
    from proxy.cli_audit import complain
    from proxy.core.model import Identity

    try:
        when = parse_when(since, datetime.now(UTC)) if since else None
    except ValueError as exc:
        complain(f"idgate diff: --since: {exc}")
        return None
    found: dict[tuple[Any, ...], Identity] = {}
    search = Search(Filters(since=when, event="decision"), complain, remember_shown=False)
    try:
        clients = boto3_clients()
        for result in search.run(c for spec in sources for c in open_source(spec, clients).chains):
            who = result.record.get("identity")
            if not isinstance(who, dict) or not isinstance(who.get("iss"), str) or not isinstance(who.get("sub"), str):
                continue                   # an unauthenticated refusal, or a capped value standing for a longer one
            groups = tuple(g for g in who.get("groups") or () if isinstance(g, str))
            client = who.get("client_id") if isinstance(who.get("client_id"), str) else None
            key = (who["iss"], who["sub"], client, groups)
            if key not in found and len(found) < MAX_AUDITED_IDENTITIES:
                found[key] = Identity(who["iss"], who["sub"], (), client, groups, time.time() + 300,
                                      MappingProxyType({"iss": who["iss"], "sub": who["sub"]}))
    except SourceError as exc:
        complain(str(exc))
        return None
    return list(found.values())


def _gained(grant: str) -> str:
    return f"now denied: {grant.removeprefix('deny ')}" if grant.startswith("deny ") else f"+ {grant}"


def _lost(grant: str) -> str:
    # A deny rule that no longer applies is access gained: say so in words, not with a minus sign.
    return f"no longer denied: {grant.removeprefix('deny ')}" if grant.startswith("deny ") else f"- {grant}"


def cmd_suggest(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from proxy.audit.query import Filters, parse_when
    from proxy.audit.search import Search
    from proxy.audit.sources import SourceError, boto3_clients, open_source
    from proxy.cli_audit import complain
    from proxy.policy.store import compile_directory
    from proxy.policy.suggest import Observations, policy_text

    if args.min_distinct < 2:
        complain("idgate suggest: --min-distinct must be at least 2")
        return EXIT_USAGE
    now = datetime.now(UTC)
    try:
        since, until = (parse_when(v, now) if v else None for v in (args.since, args.until))
    except ValueError as exc:
        complain(f"idgate suggest: --since/--until: {exc}")
        return EXIT_USAGE
    policy = compile_directory(args.policies) if args.policies else None
    seen = Observations(min_distinct=args.min_distinct)
    search = Search(Filters(since=since, until=until, event="decision", decision="allow"), complain,
                    remember_shown=False)
    try:
        clients = boto3_clients()
        sources = [open_source(spec, clients) for spec in args.audit]
        for found in search.run(chain for source in sources for chain in source.chains):
            seen.add(found.record)
    except SourceError as exc:
        complain(str(exc))
        return EXIT_USAGE
    window = f"{since or 'the start'} to {until or 'the end'}"
    sys.stdout.write(policy_text(seen.suggestions(), f"{seen.used} allowed request(s), {window}"))
    complain(f"idgate suggest: {seen.used} allowed HTTP request(s) used of {search.tally.records} record(s) read"
             + (f"; {seen.skipped} skipped (a capped path or identity)" if seen.skipped else "")
             + (f"; {seen.unspellable} left out (a path or host no policy pattern spells exactly)"
                if seen.unspellable else ""))
    for idle in seen.unused(policy) if policy is not None else ():
        what = "not used in the window" if idle.whole_rule else "grants not used in the window"
        complain(f"{idle.where}: rule '{idle.rule_id}': {what}: {'; '.join(idle.grants)}"
                 + (" (sampled: more distinct requests than kept)" if idle.sampled else ""))
    return EXIT_OK if seen.used else EXIT_FAILED
