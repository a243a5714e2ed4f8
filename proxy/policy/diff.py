"""What a policy change does to access (`idgate diff`, and the `policy_change` record of a reload): rules
added, removed and changed with each change's direction, and per identity the grants gained and lost.

A grant is one atom of access: `allow GET orders.internal /v1/orders/**`, `deny * * /admin/**`, or
`aws role/etl orders GetItem keys=${claims.tenant}`.  The identities are representatives of every `who`
of both policies (a selector's own values: a subject glob stands for the subjects it matches), and any
identities the caller adds (e.g. from an audit window), so "who gains what" is stated as identities x
targets, not as a text diff.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from proxy.core.model import Identity
from proxy.policy.engine import CompiledPolicy
from proxy.policy.rules import Effect, Rule, Who

WIDER, NARROWER, CHANGED = "wider", "narrower", "changed"
RECORD_LIMIT = 50                     # entries per list in a policy_change record


@dataclass(frozen=True, slots=True)
class FieldChange:
    field: str                        # e.g. "who.groups", "who.claims.tenant", "grants"
    before: tuple[str, ...]           # for "grants": the grants the rule no longer gives
    after: tuple[str, ...]            # ... and the ones it gives now
    direction: str                    # wider | narrower | changed (for the access the rule gives)


@dataclass(frozen=True, slots=True)
class RuleChange:
    rule_id: str
    where: str                        # the new rule's file:line
    changes: tuple[FieldChange, ...]

    @property
    def direction(self) -> str:
        found = {c.direction for c in self.changes}
        return found.pop() if len(found) == 1 else CHANGED


@dataclass(frozen=True, slots=True)
class IdentityAccess:
    label: str                        # the identity as a selector: issuer, subject, groups, claims
    gained: tuple[str, ...]
    lost: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PolicyDiff:
    added: tuple[tuple[str, str], ...]          # (rule id, file:line)
    removed: tuple[tuple[str, str], ...]
    changed: tuple[RuleChange, ...]
    access: tuple[IdentityAccess, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.access)

    def record(self) -> dict[str, Any]:
        """The `policy_change` audit record's body (and log line's): rule ids with the direction of each
        change, and who gains and loses what, each list cut at RECORD_LIMIT (with the full count)."""
        def cut(items: Sequence[Any]) -> list[Any]:
            return list(items[:RECORD_LIMIT])
        return {"added": cut([rule_id for rule_id, _ in self.added]),
                "removed": cut([rule_id for rule_id, _ in self.removed]),
                "changed": cut([{"rule": c.rule_id, "direction": c.direction, "fields": [f.field for f in c.changes]}
                                for c in self.changed]),
                "counts": {"added": len(self.added), "removed": len(self.removed), "changed": len(self.changed),
                           "identities": len(self.access)},
                "access": cut([{"identity": a.label, "gained": cut(a.gained), "lost": cut(a.lost)}
                               for a in self.access])}


def grants(rule: Rule) -> frozenset[str]:
    """The rule's atoms of access, one string each."""
    atoms: set[str] = set()
    effect = rule.effect.value
    for grant in rule.http:
        for host in grant.hosts or ("*",):
            for method in grant.methods or ("*",):
                atoms.update(f"{effect} {method} {host} {path}" for path in grant.paths)
    if rule.aws is not None:
        role = rule.aws.role_arn.rpartition(":")[2]
        mode = " gateway" if rule.aws.gateway else ""
        for table in rule.aws.dynamodb:
            scope = "".join((f" index={','.join(table.indexes)}" if table.indexes else "",
                             f" keys={','.join(table.leading_keys)}" if table.leading_keys else "",
                             f" attributes={','.join(table.attributes)}" if table.attributes else ""))
            atoms.update(f"aws {role}{mode} {table.table} {action}{scope}" for action in table.actions)
    return frozenset(atoms)


def diff(old: CompiledPolicy, new: CompiledPolicy, identities: Iterable[Identity] = (), *,
         per_identity: bool = True) -> PolicyDiff:
    """Rule changes, and (`per_identity`) each identity's grants gained and lost: that part costs rules x
    identities, so a reload of a large policy records the rule changes only."""
    old_rules, new_rules = {r.id: r for r in old.rules}, {r.id: r for r in new.rules}
    added = tuple((r.id, f"{r.file}:{r.line}") for r in new.rules if r.id not in old_rules)
    removed = tuple((r.id, f"{r.file}:{r.line}") for r in old.rules if r.id not in new_rules)
    changed = tuple(change for rule_id, rule in new_rules.items() if rule_id in old_rules
                    for change in [_rule_change(old_rules[rule_id], rule)] if change.changes)
    if not per_identity:
        return PolicyDiff(added, removed, changed)
    people = {_label(i): i for i in [*representatives(old.rules), *representatives(new.rules), *identities]}
    access = []
    for label, identity in sorted(people.items()):
        before, after = access_of(old, identity), access_of(new, identity)
        if before != after:
            access.append(IdentityAccess(label, tuple(sorted(after - before)), tuple(sorted(before - after))))
    return PolicyDiff(added, removed, changed, tuple(access))


def access_of(policy: CompiledPolicy, identity: Identity) -> frozenset[str]:
    """Every grant of every rule whose `who` matches the identity (deny rules' as `deny ...`)."""
    return frozenset(atom for rule in policy.rules if policy.who_matches(rule, identity) for atom in grants(rule))


def representatives(rules: Sequence[Rule]) -> list[Identity]:
    """Identities built from each `who`'s own values: one with the first value of every list, and one more
    for every other value of a list (so a group added to `groups: [a, b]` has an identity that gains)."""
    found = []
    for rule in rules:
        who = rule.who
        if who.any and not who.has_conditions():
            continue           # everyone: every other representative already stands in for it
        base = {"issuers": who.issuers[:1], "subjects": who.subjects[:1], "groups": who.groups[:1],
                "client_ids": who.client_ids[:1]}
        variants = [base] + [{**base, name: (value,)} for name in base for value in getattr(who, name)[1:]]
        claims: dict[str, Any] = {name: values[0] for name, values in who.claims.items()}
        claims |= {name: [values[0]] for name, values in who.claims_contain.items()}
        found += [Identity(v["issuers"][0] if v["issuers"] else "*", v["subjects"][0] if v["subjects"] else "*", (),
                           v["client_ids"][0] if v["client_ids"] else None, v["groups"], time.time() + 300,
                           MappingProxyType(claims)) for v in variants]
    return found


def _label(identity: Identity) -> str:
    parts = [f"issuer={identity.issuer}", f"subject={identity.subject}"]
    if identity.groups:
        parts.append(f"groups={','.join(identity.groups)}")
    if identity.client_id:
        parts.append(f"client_id={identity.client_id}")
    parts += [f"claims.{k}={v}" for k, v in sorted(identity.claims.items()) if k not in ("iss", "sub", "groups")]
    return " ".join(parts)


def _rule_change(old: Rule, new: Rule) -> RuleChange:
    changes: list[FieldChange] = []
    if old.effect != new.effect:
        changes.append(FieldChange("effect", (old.effect.value,), (new.effect.value,), CHANGED))
    allow = new.effect is Effect.ALLOW
    for name, before, after in _who_fields(old.who, new.who):
        if before != after:
            changes.append(FieldChange(f"who.{name}", before, after, _who_direction(name, before, after, allow)))
    had, has = grants(old), grants(new)
    if had != has:
        direction = WIDER if had < has else NARROWER if has < had else CHANGED
        if not allow and direction != CHANGED:       # a deny rule that covers more narrows access
            direction = NARROWER if direction == WIDER else WIDER
        changes.append(FieldChange("grants", tuple(sorted(had - has)), tuple(sorted(has - had)), direction))
    return RuleChange(new.id, f"{new.file}:{new.line}", tuple(changes))


def _who_fields(old: Who, new: Who) -> Iterable[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """Each condition of `who` as a list of any-of values (claims one list per claim name: names are ANDed)."""
    yield "any", ("true",) if old.any else (), ("true",) if new.any else ()
    for name in ("issuers", "subjects", "groups", "client_ids"):
        yield name, tuple(sorted(getattr(old, name))), tuple(sorted(getattr(new, name)))
    for kind in ("claims", "claims_contain"):
        before, after = getattr(old, kind), getattr(new, kind)
        for claim in sorted(set(before) | set(after)):
            yield f"{kind}.{claim}", tuple(sorted(before.get(claim, ()))), tuple(sorted(after.get(claim, ())))


def _who_direction(name: str, before: tuple[str, ...], after: tuple[str, ...], allow: bool) -> str:
    """Whether the rule now applies to more identities: a condition that goes (or, for `any`, appears)
    widens it, one that appears narrows it, more any-of values widen, fewer narrow."""
    if name == "any":
        more = bool(after)
    elif not before or not after:
        more = not after
    elif set(before) < set(after):
        more = True
    elif set(after) < set(before):
        more = False
    else:
        return CHANGED
    return (WIDER if more else NARROWER) if allow else (NARROWER if more else WIDER)
