"""The compiled policy: rules turned into an endpoint index plus precompiled identity matchers, answering
"may this identity make this HTTP request, by which rule" without scanning every rule.  Pure.

Deny by default; a matching deny rule beats any matching allow rule; among several matching rules of the
same effect the first in load order decides, so the answer is deterministic.  Path, host and method
pattern semantics are documented in proxy.policy.index.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from proxy.core.errors import BadRequest, ConfigError, ConfigProblem
from proxy.core.model import Decision, Identity
from proxy.core.reasons import Reason
from proxy.core.paths import normalize_path
from proxy.policy.index import (
    HttpIndex,
    Pattern,
    canonical_host,
    host_problem,
    path_segments,
    pattern_problem,
)
from proxy.policy import session_policy
from proxy.policy.rules import Effect, HttpGrant, Rule, Who


_GLOB_CHARS = frozenset("*?[")


class WhoMatcher:
    """A `Who` with its globs compiled once.  Empty fields do not constrain; `any` alone matches all."""

    __slots__ = ("_issuers", "_subjects", "_subject_globs", "_groups", "_client_ids", "_claims", "_claims_contain")

    def __init__(self, who: Who) -> None:
        self._issuers = frozenset(who.issuers) or None
        exact = frozenset(s for s in who.subjects if _GLOB_CHARS.isdisjoint(s))
        globs = [s for s in who.subjects if not _GLOB_CHARS.isdisjoint(s)]
        self._subjects = exact if who.subjects else None
        # fnmatchcase semantics, one alternation so a subject costs one regex match however many globs.
        self._subject_globs = re.compile("|".join(fnmatch.translate(g) for g in globs)) if globs else None
        self._groups = frozenset(who.groups) or None
        self._client_ids = frozenset(who.client_ids) or None
        self._claims = tuple((name, frozenset(values)) for name, values in who.claims.items())
        self._claims_contain = tuple((name, frozenset(values)) for name, values in who.claims_contain.items())

    def matches(self, identity: Identity) -> bool:
        if self._issuers is not None and identity.issuer not in self._issuers:
            return False
        if self._subjects is not None and identity.subject not in self._subjects:
            if self._subject_globs is None or self._subject_globs.match(identity.subject) is None:
                return False
        if self._groups is not None and self._groups.isdisjoint(identity.groups):
            return False
        if self._client_ids is not None and identity.client_id not in self._client_ids:
            return False
        for name, allowed in self._claims:
            value = identity.claims.get(name)
            # Exact: a string, no coercion (`true` in a policy never equals a JSON boolean claim), and never
            # a list that merely holds the value (tenant: [acme, globex] is not tenant: acme).
            if not isinstance(value, str) or value not in allowed:
                return False
        for name, allowed in self._claims_contain:
            value = identity.claims.get(name)
            if not isinstance(value, list | tuple) or not any(isinstance(v, str) and v in allowed for v in value):
                return False
        return True


@dataclass(frozen=True, slots=True)
class HttpExplanation:
    """Everything `idgate check` shows about one HTTP decision; rule ids are in load order."""

    decision: Decision
    deny_rules: tuple[str, ...]          # deny rules covering the request and the identity
    allow_rules: tuple[str, ...]         # allow rules covering the request and the identity
    other_identities: tuple[str, ...]    # rules covering the request, but whose `who` does not match

    def summary(self) -> str:
        if self.decision.allowed:
            return f"allowed: matched rule {self.decision.rule_id}"
        if self.decision.rule_id is not None:
            return f"denied by rule {self.decision.rule_id}"
        return "denied: no rule matched"


_TEMPLATE_CLAIM = re.compile(r"\$\{claims\.([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class AwsReads:
    """The groups and claims that rules with an `aws` block read (in `who` or a leading-key template): all
    a gateway credential has to carry of its identity for the gateway to decide as the broker would."""

    groups: frozenset[str]
    claims: frozenset[str]

    @classmethod
    def of(cls, rules: Iterable[Rule]) -> AwsReads:
        groups: set[str] = set()
        claims: set[str] = set()
        for rule in rules:
            if rule.aws is None:
                continue
            groups.update(rule.who.groups)
            claims.update(rule.who.claims, rule.who.claims_contain)
            claims.update(m.group(1) for d in rule.aws.dynamodb for k in d.leading_keys
                          if (m := _TEMPLATE_CLAIM.fullmatch(k)))
        return cls(frozenset(groups), frozenset(claims))

    def view(self, identity: Identity) -> tuple[tuple[str, ...], dict[str, Any]]:
        """The identity's groups and claims that the rules read, and nothing else of it."""
        return (tuple(g for g in identity.groups if g in self.groups),
                {name: identity.claims[name] for name in sorted(self.claims) if name in identity.claims})


class CompiledPolicy:
    """Immutable once built; reload builds a new one and swaps the reference."""

    __slots__ = ("rules", "_by_id", "_index", "_ordered", "_matcher_of", "aws_reads")

    def __init__(
        self,
        rules: tuple[Rule, ...],
        index: HttpIndex,
        ordered: tuple[tuple[Rule, WhoMatcher], ...],
        matcher_of: Mapping[str, WhoMatcher],
    ) -> None:
        self.rules = rules
        self._by_id = {rule.id: rule for rule in rules}
        self._index = index
        self._ordered = ordered
        self._matcher_of = matcher_of
        self.aws_reads = AwsReads.of(rules)

    @classmethod
    def compile(cls, rules: Iterable[Rule]) -> CompiledPolicy:
        """Build the index; every unusable rule is reported at once as a ConfigError."""
        rules = tuple(rules)
        problems: list[ConfigProblem] = []
        seen: set[str] = set()
        matchers: dict[tuple[Any, ...], WhoMatcher] = {}
        matcher_of: dict[str, WhoMatcher] = {}
        for rule in rules:
            if rule.id in seen:
                problems.append(_problem(rule, "duplicate rule id"))
            seen.add(rule.id)
            if not _constrains(rule.who):
                problems.append(_problem(rule, "`who` matches nobody: give a condition or `any: true`"))
            key = _who_key(rule.who)  # many rules share a `who`: compile each distinct one once
            if key not in matchers:
                matchers[key] = WhoMatcher(rule.who)
            matcher_of[rule.id] = matchers[key]

        # AWS blocks: every session policy fits STS for any caller, and rules sharing a role agree (DESIGN §3).
        for rule in rules:
            problems.extend(_problem(rule, message) for message in session_policy.rule_problems(rule))
        problems.extend(_problem(rule, message) for rule, message in session_policy.cross_rule_problems(rules))

        # Deny rules get the lowest numbers, so the first candidate (by number) whose `who` matches decides.
        ordered_rules = [r for r in rules if r.effect is Effect.DENY] + [r for r in rules if r.effect is Effect.ALLOW]
        patterns: list[Pattern] = []
        for payload, rule in enumerate(ordered_rules):
            for grant in rule.http:
                compiled, found = _compile_grant(grant, payload)
                problems.extend(_problem(rule, message) for message in found)
                patterns.extend(compiled)
        if problems:
            raise ConfigError(sorted(problems, key=lambda p: (p.file, p.line or 0)))
        ordered = tuple((rule, matcher_of[rule.id]) for rule in ordered_rules)
        return cls(rules, HttpIndex(patterns), ordered, matcher_of)

    def rule(self, rule_id: str) -> Rule | None:
        return self._by_id.get(rule_id)

    def decide_http(self, identity: Identity, method: str, host: str, path: str) -> Decision:
        """Decide one HTTP request.  `path` must come from proxy.core.paths.normalize_path."""
        for payload in sorted(self._index.lookup(method.upper(), canonical_host(host), path)):
            rule, matcher = self._ordered[payload]
            if matcher.matches(identity):
                if rule.effect is Effect.DENY:
                    return Decision(False, rule.id, (Reason.DENIED_BY_RULE,), identity)
                return Decision(True, rule.id, (Reason.MATCHED,), identity)
        return Decision(False, None, (Reason.NO_MATCHING_RULE,), identity)

    def explain_http(self, identity: Identity, method: str, host: str, path: str) -> HttpExplanation:
        """The decision plus every rule that covered the request, for humans (`idgate check`)."""
        deny: list[str] = []
        allow: list[str] = []
        other: list[str] = []
        for payload in sorted(self._index.lookup(method.upper(), canonical_host(host), path)):
            rule, matcher = self._ordered[payload]
            if not matcher.matches(identity):
                other.append(rule.id)
            elif rule.effect is Effect.DENY:
                deny.append(rule.id)
            else:
                allow.append(rule.id)
        decision = self.decide_http(identity, method, host, path)
        return HttpExplanation(decision, tuple(deny), tuple(allow), tuple(other))

    def who_matches(self, rule: Rule, identity: Identity) -> bool:
        """Whether `rule` (one of this policy's) is about `identity`, by its compiled `who`."""
        return self._matcher_of[rule.id].matches(identity)

    def rules_for_identity(self, identity: Identity) -> tuple[Rule, ...]:
        """Allow rules with an `aws` block whose `who` matches, in load order (for the credential broker)."""
        return tuple(
            rule
            for rule in self.rules
            if rule.effect is Effect.ALLOW and rule.aws is not None and self._matcher_of[rule.id].matches(identity)
        )


def _compile_grant(grant: HttpGrant, payload: int) -> tuple[list[Pattern], list[str]]:
    """The index patterns of one grant, or the reasons it is unusable."""
    hosts = tuple(canonical_host(h) for h in grant.hosts)
    methods = tuple(m.upper() for m in grant.methods)
    found = [p for p in (host_problem(h) for h in hosts) if p]
    if any(m in ("*", "") for m in methods):
        found.append("method '*' is not a pattern: leave methods empty to match any method")
    if not grant.paths:
        found.append("an http grant needs at least one path ('/**' for every path)")
    compiled: list[Pattern] = []
    for pattern in grant.paths:
        segments, problem = _pattern_segments(pattern)
        if problem:
            found.append(problem)
        compiled.append((hosts, methods, segments, payload))
    return ([] if found else compiled), list(dict.fromkeys(found))


def _pattern_segments(pattern: str) -> tuple[tuple[str, ...], str | None]:
    """Put a path pattern in the same canonical form as request paths, then split it."""
    if not pattern.startswith("/"):
        return (), f"path pattern must start with '/': {pattern!r}"
    # Non-ASCII in a pattern means its UTF-8 escapes, which is how such a request path arrives.
    ascii_pattern = "".join(c if c.isascii() else quote(c) for c in pattern)
    try:
        canonical = normalize_path(ascii_pattern)
    except BadRequest as exc:
        return (), f"path pattern {pattern!r}: {exc.message}"
    segments = tuple(path_segments(canonical))
    problem = pattern_problem(segments)
    return segments, (f"path pattern {pattern!r}: {problem}" if problem else None)


def _constrains(who: Who) -> bool:
    return who.any or who.has_conditions()


def _who_key(who: Who) -> tuple[Any, ...]:
    claims = tuple(sorted((name, tuple(values)) for name, values in who.claims.items()))
    contain = tuple(sorted((name, tuple(values)) for name, values in who.claims_contain.items()))
    return (who.any, who.issuers, who.subjects, who.groups, who.client_ids, claims, contain)


def _problem(rule: Rule, message: str) -> ConfigProblem:
    return ConfigProblem(rule.file or "<policy>", rule.line or None, message, rule.id)
