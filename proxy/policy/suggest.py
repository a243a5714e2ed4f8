"""`idgate suggest`: from the allowed HTTP decisions of an audit window, the narrowest rules that would allow
exactly that traffic per identity, and the rules and grants no record used (candidates for removal).

Paths are generalized only where the observations justify it: a segment position becomes `*` when at
least `min_distinct` different values were seen there under the same prefix, and a prefix becomes `/**`
when requests below it end at `min_distinct` or more different depths.  Every pattern carries its
evidence (requests, distinct paths).  Memory is bounded by the shape of the traffic, not its volume: a
position holding more than MAX_CHILDREN values is folded to `*` as soon as it does.
It proposes; a person applies.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.core.model import Identity
from proxy.policy.engine import CompiledPolicy
from proxy.policy.loader import host_pattern_problem, path_pattern_problem
from proxy.policy.rules import Effect, HttpGrant, Rule, Who

MAX_CHILDREN = 256
MAX_SAMPLES_PER_RULE = 10_000          # distinct requests kept per rule to tell which of its grants were used
HTTP_SURFACES = frozenset({"proxy", "forward_auth", "ext_authz_http", "ext_authz_grpc"})
AWS_SURFACES = frozenset({"credentials", "dynamodb"})
WILD = "*"
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_METHOD = re.compile(r"[A-Z]{1,16}")


@dataclass(slots=True)
class _Node:
    count: int = 0                     # requests that ended here
    children: dict[str, _Node] = field(default_factory=dict)

    def add(self, segments: list[str], at: int = 0) -> None:
        if at == len(segments):
            self.count += 1
            return
        key = segments[at]
        if WILD in self.children:
            key = WILD
        elif key not in self.children and len(self.children) >= MAX_CHILDREN:
            self._fold()          # a new dict: the request goes into the folded one
            key = WILD
        self.children.setdefault(key, _Node()).add(segments, at + 1)

    def _fold(self) -> None:
        merged = _Node()
        for child in self.children.values():
            merged.merge(child)
        self.children = {WILD: merged}

    def merge(self, other: _Node) -> None:
        self.count += other.count
        for key, child in other.children.items():
            self.children.setdefault(key, _Node()).merge(child)

    def generalize(self, min_distinct: int) -> None:
        """Fold a position into `*` where enough different values were seen (or one was folded already)."""
        if len(self.children) >= min_distinct or (WILD in self.children and len(self.children) > 1):
            self._fold()
        for child in self.children.values():
            child.generalize(min_distinct)

    def total(self) -> int:
        return self.count + sum(child.total() for child in self.children.values())

    def depths(self, depth: int = 0) -> set[int]:
        found = {depth} if self.count else set()
        for child in self.children.values():
            found |= child.depths(depth + 1)
        return found

    def patterns(self, prefix: str, min_distinct: int) -> Iterable[tuple[str, int]]:
        """The paths below this node: `prefix/**` at the deepest node where requests end at enough depths
        (a node with one child and no requests of its own passes the question on, so `/files/**` is
        proposed rather than `/**`)."""
        below = self.depths()
        narrower = not self.count and len(self.children) == 1 and WILD not in self.children
        if self.children and not narrower and len(below - {0}) >= min_distinct:
            if self.count:
                yield prefix or "/", self.count
            yield prefix + "/**", self.total() - self.count
            return
        if self.count:
            yield prefix or "/", self.count
        for key, child in sorted(self.children.items()):
            yield from child.patterns(f"{prefix}/{key}", min_distinct)


@dataclass(frozen=True, slots=True)
class Grant:
    host: str
    methods: tuple[str, ...]
    paths: tuple[tuple[str, int], ...]          # (pattern, requests)


@dataclass(frozen=True, slots=True)
class Suggestion:
    issuer: str
    subject: str
    grants: tuple[Grant, ...]
    requests: int


@dataclass(frozen=True, slots=True)
class Unused:
    rule_id: str
    where: str
    grants: tuple[str, ...]                     # the rule's grants no request used; all of them if the rule was unused
    whole_rule: bool
    sampled: bool = False                       # more distinct requests than were kept: a grant may be used after all


@dataclass(slots=True)
class Observations:
    """What a window of decision records shows: fed one record at a time (memory bounded as above)."""

    min_distinct: int = 3
    records: int = 0
    used: int = 0
    skipped: int = 0                            # allowed HTTP decisions idgate could not use (a capped path)
    unspellable: int = 0                        # ... or whose path or host no policy pattern spells exactly
    _tries: dict[tuple[str, str, str, str], _Node] = field(default_factory=dict)   # (iss, sub, host, method)
    _rules: dict[str, set[tuple[str, str, str]]] = field(default_factory=dict)     # rule -> (method, host, path)
    _overflow: set[str] = field(default_factory=set)
    _aws_used: set[str] = field(default_factory=set)            # rules named by an allowed vend or gateway call

    def add(self, record: Mapping[str, Any]) -> None:
        self.records += 1
        if record.get("event") != "decision" or record.get("decision") != "allow":
            return
        if record.get("surface") in AWS_SURFACES:
            for part in (record.get("aws"), record.get("dynamodb")):
                rules = part.get("rules") if isinstance(part, dict) else None
                self._aws_used.update(r for r in rules or () if isinstance(r, str))
            return
        if record.get("surface") not in HTTP_SURFACES:
            return
        identity, target, rule = record.get("identity"), record.get("target"), record.get("rule")
        values = (identity.get("iss"), identity.get("sub")) if isinstance(identity, dict) else (None, None)
        if not isinstance(target, dict) or not isinstance(rule, str):
            self.skipped += 1
            return
        method, host, path = target.get("method"), target.get("host"), target.get("path")
        if not all(isinstance(v, str) for v in (*values, method, host, path)) or not str(path).startswith("/"):
            self.skipped += 1          # a capped value stands for a longer one: no pattern can be built from it
            return
        issuer, subject = str(values[0]), str(values[1])
        segments = str(path).split("/")[1:]
        if segments == [""]:
            segments = []
        # A path or host a policy cannot spell (a `%`, a `;`, a `*` in a segment) is left out rather than
        # widened to a pattern the traffic did not justify.
        if any(s in (WILD, "**") or path_pattern_problem("/" + s) for s in segments) or \
                host_pattern_problem(str(host)) or not _METHOD.fullmatch(str(method)):
            self.unspellable += 1
            return
        self.used += 1
        self._tries.setdefault((issuer, subject, str(host), str(method)), _Node()).add(segments)
        seen = self._rules.setdefault(rule, set())
        if len(seen) < MAX_SAMPLES_PER_RULE:
            seen.add((str(method), str(host), str(path)))
        else:
            self._overflow.add(rule)

    def suggestions(self) -> list[Suggestion]:
        by_identity: dict[tuple[str, str], dict[tuple[str, tuple[tuple[str, int], ...]], set[str]]] = {}
        for (issuer, subject, host, method), trie in self._tries.items():
            trie.generalize(self.min_distinct)
            paths = tuple(trie.patterns("", self.min_distinct))
            by_identity.setdefault((issuer, subject), {}).setdefault((host, paths), set()).add(method)
        found = []
        for (issuer, subject), grants in sorted(by_identity.items()):
            made = tuple(Grant(host, tuple(sorted(methods)), paths) for (host, paths), methods in sorted(grants.items()))
            found.append(Suggestion(issuer, subject, made, sum(n for g in made for _, n in g.paths)))
        return found

    def unused(self, policy: CompiledPolicy) -> list[Unused]:
        found = []
        for rule in policy.rules:
            if rule.effect is not Effect.ALLOW:
                continue
            if rule.aws is not None and rule.id not in self._aws_used and not rule.http:
                role = rule.aws.role_arn.rpartition(":")[2]
                found.append(Unused(rule.id, f"{rule.file}:{rule.line}",
                                    tuple(f"aws {role} {t.table} {','.join(t.actions)}" for t in rule.aws.dynamodb), True))
                continue
            if not rule.http:
                continue
            atoms = [(grant, host, method, path) for grant in rule.http for host in grant.hosts or ("",)
                     for method in grant.methods or ("",) for path in grant.paths]
            seen = self._rules.get(rule.id)
            if not seen:
                found.append(Unused(rule.id, f"{rule.file}:{rule.line}", tuple(_atom(*a[1:]) for a in atoms), True))
                continue
            idle = tuple(_atom(*a[1:]) for a in atoms if not _covers_any(a[1], a[2], a[3], seen))
            if idle:
                found.append(Unused(rule.id, f"{rule.file}:{rule.line}", idle, False, rule.id in self._overflow))
        return found


def _atom(host: str, method: str, path: str) -> str:
    return f"{method or '*'} {host or '*'} {path}"


def _covers_any(host: str, method: str, path: str, requests: Iterable[tuple[str, str, str]]) -> bool:
    """Whether one grant (host, method, path pattern; '' = any) covers an observed request, by the engine."""
    probe = CompiledPolicy.compile([Rule("probe", Who(any=True), http=(
        HttpGrant((path,), (host,) if host else (), (method,) if method else ()),))])
    anyone = Identity("", "", (), None, (), time.time() + 60)
    return any(probe.decide_http(anyone, *request).allowed for request in requests)


def policy_text(suggestions: Iterable[Suggestion], source: str) -> str:
    """A policy file `idgate check-config` accepts, each path with its evidence as a comment."""
    suggestions = list(suggestions)
    lines = [f"# Proposed by idgate suggest from {source}.", "# It allows exactly the traffic observed: review before use.",
             "rules:" if suggestions else "rules: []"]
    for n, s in enumerate(suggestions, start=1):
        rule_id = f"suggested-{_ID_UNSAFE.sub('-', s.subject).strip('-')[:80] or 'identity'}-{n}"
        lines += [f"  - id: {rule_id}                    # {s.requests} request(s)",
                  f"    who: {{issuer: {_quoted(s.issuer)}, subject: {_quoted(_literal_glob(s.subject))}}}",
                  "    http:"]
        for grant in s.grants:
            lines += [f"      - hosts: [{_quoted(grant.host)}]", f"        methods: [{', '.join(grant.methods)}]",
                      "        paths:"]
            lines += [f"          - {_quoted(path)}    # {count} request(s)" for path, count in grant.paths]
    return "\n".join(lines) + "\n"


def _literal_glob(subject: str) -> str:
    """The subject as a glob matching only itself (who.subject is fnmatch: `*`, `?` and `[` would widen it)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in subject)


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
