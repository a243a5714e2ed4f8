"""Policy → IAM session policy: the `aws` blocks of the rules matching an identity, grouped by role and
rendered as the least-privilege JSON document idgate hands to STS.  Pure; claim values are data, never syntax.

A filled-in template is a JSON string built by `json.dumps`, so a claim can never add a key, a value or
a statement.  Claims that are missing, not strings, empty, too long, or carry characters with a meaning
in IAM (`$` starts a policy variable; `*` and `?` are wildcards elsewhere) deny the request: the
document never holds an empty or wildcard key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.config import MAX_AWS_REGION_CHARS, MIN_BROKER_DURATION
from proxy.core.errors import AccessDenied
from proxy.core.reasons import Reason
from proxy.policy.rules import DynamoDbGrant, Effect, Rule

IAM_VERSION = "2012-10-17"
MAX_SESSION_POLICY_CHARS = 2048          # STS: the plaintext of an inline session policy
MAX_TEMPLATE_VALUE_CHARS = 128           # a filled template, JSON-encoded without its quotes
# Requests for these carry no partition key, so a leading-keys condition would always refuse them;
# granting them without leading keys is an explicit, separate choice.
NO_PARTITION_KEY_ACTIONS = frozenset({"Scan", "DescribeTable"})
# AWS's documented companion of an attribute allow-list: no "all attributes" projections or return values.
_RETURN_VALUES = ("NONE", "UPDATED_OLD", "UPDATED_NEW")

_TEMPLATE = re.compile(r"\$\{claims\.([A-Za-z_][A-Za-z0-9_]*)\}")
_ROLE_ARN = re.compile(r"arn:(?P<partition>aws[a-z-]*):iam::(?P<account>\d{12}):role/(?:[\w+=,.@-]+/)*(?P<name>[\w+=,.@-]+)")
_FORBIDDEN_IN_VALUE = frozenset("$*?")


@dataclass(frozen=True, slots=True)
class RoleChoice:
    """One role an identity may take, with everything its matching rules grant under that role."""

    name: str                            # the role ARN's last path segment: what `?role=` names
    role_arn: str
    rule_ids: tuple[str, ...]            # load order
    dynamodb: tuple[DynamoDbGrant, ...]
    dynamodb_rules: tuple[str, ...]      # the id of the rule each of `dynamodb` comes from
    web_identity: bool
    gateway: bool                        # idgate's own credentials, for the DynamoDB gateway only
    duration: int | None                 # the shortest a rule asks for; None = config default


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    document: str                        # compact JSON, exactly what STS receives
    sha256: str

    @classmethod
    def of(cls, document: dict[str, Any]) -> SessionPolicy:
        text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
        return cls(text, hashlib.sha256(text.encode()).hexdigest())


@dataclass(frozen=True, slots=True)
class _Arn:
    partition: str
    account: str
    name: str


def _parse_role_arn(role_arn: str) -> _Arn:
    match = _ROLE_ARN.fullmatch(role_arn)
    if match is None:   # the loader refuses such rules; reaching here is a programming error
        raise ValueError("not an IAM role ARN")
    return _Arn(match["partition"], match["account"], match["name"])


def role_name(role_arn: str) -> str:
    return _parse_role_arn(role_arn).name


# --- which role ---------------------------------------------------------------------------------------

def role_choices(rules: Iterable[Rule]) -> tuple[RoleChoice, ...]:
    """Group the matching allow rules' `aws` blocks by role ARN (rules naming one role add up)."""
    grouped: dict[str, list[Rule]] = {}
    for rule in rules:
        if rule.aws is not None and rule.effect is Effect.ALLOW:
            grouped.setdefault(rule.aws.role_arn, []).append(rule)
    choices = []
    for role_arn, same_role in grouped.items():
        grants = [r.aws for r in same_role if r.aws is not None]
        pairs = [(r.id, d) for r in same_role if r.aws is not None for d in r.aws.dynamodb]
        durations = [g.duration for g in grants if g.duration is not None]
        choices.append(RoleChoice(
            name=role_name(role_arn), role_arn=role_arn, rule_ids=tuple(r.id for r in same_role),
            dynamodb=tuple(d for _, d in pairs), dynamodb_rules=tuple(rule_id for rule_id, _ in pairs),
            # Load-time checks make rules naming one role agree on these; `any` keeps a slip from widening.
            web_identity=any(g.web_identity for g in grants),
            # Gateway mode is the narrower one: a caller of such a role never holds STS credentials.
            gateway=any(g.gateway for g in grants),
            duration=min(durations) if durations else None,
        ))
    return tuple(choices)


def choose_role(rules: Iterable[Rule], requested: str | None) -> RoleChoice:
    """The role for this request: the one named by `requested` (role name or ARN), or the only one.
    AccessDenied when the identity may take no role, not that one, or the choice is ambiguous."""
    choices = role_choices(rules)
    if not choices:
        raise AccessDenied("no policy rule grants this identity an AWS role", reason=Reason.NO_AWS_RULE)
    if requested is None:
        if len(choices) > 1:
            raise AccessDenied("several roles are granted: choose one with ?role=<name>", reason=Reason.ROLE_REQUIRED)
        return choices[0]
    named = [c for c in choices if requested in (c.name, c.role_arn)]
    if not named:
        raise AccessDenied("the requested role is not granted to this identity", reason=Reason.ROLE_NOT_GRANTED)
    if len(named) > 1:
        raise AccessDenied("the role name is ambiguous: give the role ARN", reason=Reason.AMBIGUOUS_ROLE)
    return named[0]


# --- rendering -------------------------------------------------------------------------------------------

def render_session_policy(choice: RoleChoice, claims: Mapping[str, Any], region: str) -> SessionPolicy:
    """The session policy for one caller; AccessDenied when a template cannot be filled safely."""
    policy = SessionPolicy.of(_document(choice, region, lambda name: _claim_value(claims, name)))
    if len(policy.document) > MAX_SESSION_POLICY_CHARS:
        # Load-time checks bound every rule; several rules naming one role can still add up.
        raise AccessDenied("the session policy for this role is too large for STS", reason=Reason.SESSION_POLICY_TOO_LARGE)
    return policy


def _document(choice: RoleChoice, region: str, fill: Callable[[str], str]) -> dict[str, Any]:
    arn = _parse_role_arn(choice.role_arn)
    return {
        "Version": IAM_VERSION,
        "Statement": [_statement(grant, arn, region, fill, gateway=choice.gateway) for grant in choice.dynamodb],
    }


def _statement(grant: DynamoDbGrant, arn: _Arn, region: str, fill: Callable[[str], str], *,
               gateway: bool) -> dict[str, Any]:
    table = f"arn:{arn.partition}:dynamodb:{region}:{arn.account}:table/{grant.table}"
    # The gateway reads each table's key schema with the role's credentials (proxy.aws.dynamodb.schema).
    actions = (*grant.actions, "DescribeTable") if gateway else grant.actions
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Action": [f"dynamodb:{a}" for a in dict.fromkeys(actions)],
        "Resource": [table, *(f"{table}/index/{index}" for index in dict.fromkeys(grant.indexes))],
    }
    all_values: dict[str, list[str]] = {}
    condition: dict[str, Any] = {}
    if grant.leading_keys:
        all_values["dynamodb:LeadingKeys"] = list(dict.fromkeys(_leading_key(k, fill) for k in grant.leading_keys))
        # ForAllValues is true when the key is absent: demand it, or a keyless request would pass.
        condition["Null"] = {"dynamodb:LeadingKeys": "false"}
    if grant.attributes:
        all_values["dynamodb:Attributes"] = list(dict.fromkeys(grant.attributes))
        condition["StringEqualsIfExists"] = {
            "dynamodb:Select": "SPECIFIC_ATTRIBUTES", "dynamodb:ReturnValues": list(_RETURN_VALUES)}
    if all_values:
        statement["Condition"] = {"ForAllValues:StringEquals": all_values, **condition}
    return statement


def _leading_key(key: str, fill: Callable[[str], str]) -> str:
    match = _TEMPLATE.fullmatch(key)
    return key if match is None else str(fill(match.group(1)))


def leading_keys(grant: DynamoDbGrant, claims: Mapping[str, Any]) -> tuple[str, ...]:
    """The grant's leading keys with its templates filled from `claims`, exactly as the session policy
    holds them (AccessDenied when one cannot be filled safely)."""
    return tuple(dict.fromkeys(_leading_key(k, lambda name: _claim_value(claims, name)) for k in grant.leading_keys))


def _claim_value(claims: Mapping[str, Any], name: str) -> str:
    # Messages name the claim (it is in the policy file) but never its value.
    if name not in claims:
        raise AccessDenied(f"the token has no '{name}' claim, which the policy needs", reason=Reason.CLAIM_MISSING)
    value = claims[name]
    if not isinstance(value, str):
        raise AccessDenied(f"the token's '{name}' claim is not a string", reason=Reason.CLAIM_NOT_STRING)
    if not value:
        raise AccessDenied(f"the token's '{name}' claim is empty", reason=Reason.CLAIM_EMPTY)
    if len(json.dumps(value, ensure_ascii=False)) - 2 > MAX_TEMPLATE_VALUE_CHARS:
        raise AccessDenied(f"the token's '{name}' claim is too long for a session policy", reason=Reason.CLAIM_TOO_LONG)
    if not _FORBIDDEN_IN_VALUE.isdisjoint(value) or not value.isprintable() or max(map(ord, value)) > 0xFF:
        # IAM policy text is limited to U+0020..U+00FF; `$`, `*`, `?` have meanings in IAM.
        raise AccessDenied(f"the token's '{name}' claim has characters a session policy cannot carry",
                           reason=Reason.CLAIM_UNSAFE)
    return value


# --- load-time checks ------------------------------------------------------------------------------------

def rule_problems(rule: Rule) -> list[str]:
    """Why the `aws` block of `rule` could not be vended for some caller (checked at policy load)."""
    grant = rule.aws
    if grant is None or rule.effect is not Effect.ALLOW:
        return []
    try:
        choice = role_choices([rule])[0]
    except ValueError:
        return ["role_arn is not an IAM role ARN"]
    problems = []
    if grant.duration is not None and grant.duration < MIN_BROKER_DURATION:
        problems.append(f"aws.duration must be at least {MIN_BROKER_DURATION} seconds: idgate vends credentials "
                        "with at least 30 minutes left")
    for dynamodb in grant.dynamodb:
        keyless = sorted(NO_PARTITION_KEY_ACTIONS.intersection(dynamodb.actions))
        if dynamodb.leading_keys and keyless:
            problems.append(f"table {dynamodb.table}: {', '.join(keyless)} never carry a partition key, so with "
                            "leading_keys they would always be refused; grant them in a separate entry")
        if any(k == "" for k in dynamodb.leading_keys):
            problems.append(f"table {dynamodb.table}: a leading key must not be empty")
    worst = SessionPolicy.of(_document(choice, "r" * MAX_AWS_REGION_CHARS, lambda _name: "v" * MAX_TEMPLATE_VALUE_CHARS))
    if len(worst.document) > MAX_SESSION_POLICY_CHARS:
        problems.append(f"the rendered session policy can reach {len(worst.document)} characters "
                        f"(templates at {MAX_TEMPLATE_VALUE_CHARS} characters); STS accepts "
                        f"{MAX_SESSION_POLICY_CHARS}: split the rule or list fewer tables, actions or attributes")
    return problems


def cross_rule_problems(rules: Sequence[Rule]) -> list[tuple[Rule, str]]:
    """Rules naming the same role must agree on how it is assumed."""
    first: dict[str, Rule] = {}
    problems = []
    for rule in rules:
        if rule.aws is None or rule.effect is not Effect.ALLOW:
            continue
        seen = first.setdefault(rule.aws.role_arn, rule)
        if seen.aws is not None and seen.aws.web_identity != rule.aws.web_identity:
            problems.append((rule, f"web_identity differs from rule {seen.id}, which names the same role"))
        if seen.aws is not None and seen.aws.gateway != rule.aws.gateway:
            problems.append((rule, f"gateway differs from rule {seen.id}, which names the same role"))
    return problems
