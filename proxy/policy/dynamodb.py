"""DynamoDB touches against a role's grants, as IAM fine-grained access control judges them: a touch is
allowed when one grant allows all of it; a call is allowed only when every one of its touches is.  Pure.

Mirrors the session policy idgate renders for the same grants (proxy.policy.session_policy): the table
and its listed indexes, the actions, `dynamodb:LeadingKeys` (every partition key among the allowed ones,
and at least one) and `dynamodb:Attributes` (with SPECIFIC_ATTRIBUTES and no whole-item writes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from proxy.core.model import Touch
from proxy.core.reasons import Reason
from proxy.policy.session_policy import RoleChoice, leading_keys

# How far a touch got through one grant's checks: the denial names the check of the grant that came closest.
_PROGRESS = (Reason.ACTION_NOT_GRANTED, Reason.INDEX_NOT_GRANTED, Reason.UNMAPPED_INDEX,
             Reason.LEADING_KEY_NOT_GRANTED, Reason.WHOLE_ITEM_WRITE, Reason.ALL_ATTRIBUTES,
             Reason.ATTRIBUTE_NOT_GRANTED)


@dataclass(frozen=True, slots=True)
class TableGrant:
    """One `dynamodb` entry of a rule, its templates filled for one caller."""

    rule_id: str
    table: str
    actions: frozenset[str]
    indexes: frozenset[str]
    leading_keys: frozenset[str] | None      # None: any partition key
    attributes: frozenset[str] | None        # None: any attribute


class TouchVerdict(NamedTuple):
    allowed: bool
    rules: tuple[str | None, ...]            # per touch: the rule whose grant allows it (None: denied)
    reason: Reason                           # MATCHED, or why the first denied touch is denied
    denied: int | None                       # the index of the first denied touch


def table_grants(choice: RoleChoice, claims: Mapping[str, Any]) -> tuple[TableGrant, ...]:
    """The role's grants for this caller (AccessDenied when a leading-key template cannot be filled)."""
    return tuple(
        TableGrant(rule_id=rule_id, table=grant.table, actions=frozenset(grant.actions),
                   indexes=frozenset(grant.indexes),
                   leading_keys=frozenset(leading_keys(grant, claims)) if grant.leading_keys else None,
                   attributes=frozenset(grant.attributes) if grant.attributes else None)
        for rule_id, grant in zip(choice.dynamodb_rules, choice.dynamodb, strict=True))


def grants_table(grants: Sequence[TableGrant], table: str, action: str, index: str | None) -> bool:
    """Whether any grant could allow `action` on this table (and index), before its keys are known: the
    gateway asks DynamoDB for a table's key schema only for a table the caller may touch at all."""
    return any(g.table == table and action in g.actions and (index is None or index in g.indexes) for g in grants)


def authorize(touches: Sequence[Touch], grants: Sequence[TableGrant]) -> TouchVerdict:
    rules: list[str | None] = []
    for i, touch in enumerate(touches):
        closest = 0
        allowed_by = None
        for grant in grants:
            if grant.table != touch.table:
                continue
            failed = _failed_check(touch, grant)
            if failed is None:
                allowed_by = grant.rule_id
                break
            closest = max(closest, _PROGRESS.index(failed))
        if allowed_by is None:
            rules.extend([None] * (len(touches) - i))
            return TouchVerdict(False, tuple(rules), _PROGRESS[closest], i)
        rules.append(allowed_by)
    return TouchVerdict(True, tuple(rules), Reason.MATCHED, None)


def _failed_check(touch: Touch, grant: TableGrant) -> Reason | None:
    if touch.action not in grant.actions:
        return Reason.ACTION_NOT_GRANTED
    if touch.index is not None and touch.index not in grant.indexes:
        return Reason.INDEX_NOT_GRANTED
    if grant.leading_keys is not None:
        if touch.index is not None and not touch.mapped:
            # An index keyed by another attribute: its partition keys are not the table's leading keys.
            return Reason.UNMAPPED_INDEX
        if not touch.keys or not grant.leading_keys.issuperset(touch.keys):
            return Reason.LEADING_KEY_NOT_GRANTED
    if grant.attributes is not None:
        if touch.whole_item:
            return Reason.WHOLE_ITEM_WRITE
        if touch.attributes is None:
            return Reason.ALL_ATTRIBUTES
        if not grant.attributes.issuperset(touch.attributes):
            return Reason.ATTRIBUTE_NOT_GRANTED
    return None
