"""policies/*.yaml → validated Rule objects.  Every problem names the file, the line and the rule;
all problems of all files are reported at once (ConfigError).

Spelling choices (see DESIGN §3): `who.issuer`, `who.subject`, `who.client_id` and `who.groups` take a string
or a list; every other list must be a list.  An explicitly empty list or mapping is an error: in a policy it
would silently mean "any".  Methods are case-sensitive (RFC 9110), so lower-case methods are rejected, not
upper-cased.  Hosts are lower-cased (host names are case-insensitive) and are DNS names, IPv4 literals or a
single leading wildcard label (`*.example.com`).  Files whose name starts with "." are skipped (editor files).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import yaml

from proxy.core.hosts import is_host_name
from proxy.core.errors import ConfigError, ConfigProblem
from proxy.policy.rules import AwsGrant, DynamoDbGrant, Effect, HttpGrant, Rule, Who
from proxy.config.decoder import Decoder, Schema, Spot, line_of, read_yaml

DYNAMODB_ACTIONS = frozenset({
    "GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan", "BatchGetItem", "BatchWriteItem",
    "ConditionCheckItem", "TransactGetItems", "TransactWriteItems", "PartiQLSelect", "PartiQLInsert",
    "PartiQLUpdate", "PartiQLDelete", "DescribeTable",
})
MIN_DURATION, MAX_DURATION = 900, 43200     # STS AssumeRole DurationSeconds bounds

_RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")            # RFC 9110 token
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
_TABLE = re.compile(r"[A-Za-z0-9_.-]{3,255}")
_CLAIM_TEMPLATE = re.compile(r"\$\{claims\.[A-Za-z_][A-Za-z0-9_]*\}")
_PATH_FORBIDDEN = ("?", "#", "%", ";", "\\")


def path_pattern_problem(pattern: str) -> str | None:
    """Why `pattern` is not a policy path: normalized, `*` a whole segment, `**` only a whole last segment."""
    if not pattern.startswith("/"):
        return "must start with '/'"
    if "//" in pattern:
        return "must not contain '//'"
    if any(c in pattern for c in _PATH_FORBIDDEN) or not pattern.isprintable() or " " in pattern:
        return "must not contain '?', '#', '%', ';', '\\', spaces or control characters"
    segments = pattern.split("/")[1:]
    for i, segment in enumerate(segments):
        if segment in (".", ".."):
            return "must not contain '.' or '..' segments"
        if segment == "**" and i != len(segments) - 1:
            return "'**' is only allowed as the last segment"
        if "*" in segment and segment not in ("*", "**"):
            return "'*' and '**' must be whole segments"
    return None


def host_pattern_problem(host: str) -> str | None:
    """Why `host` (already lower-cased) is not a host name or a `*.domain` wildcard."""
    name = host[2:] if host.startswith("*.") else host
    if not is_host_name(name):
        return f"'{host}' is not a lower-case host name or '*.domain' wildcard (no port)"
    return None


def _check_who(who: Who, spot: Spot) -> Who:
    conditions = who.has_conditions()
    if who.any and conditions:
        spot.report("'any: true' together with other conditions is ambiguous; use one or the other")
    elif not who.any and not conditions:
        spot.report("needs at least one condition (issuer, subject, groups, client_id, claims, claims_contain) "
                    "or 'any: true'")
    return who


def _check_http(grant: HttpGrant, spot: Spot) -> HttpGrant:
    for i, path in enumerate(grant.paths):
        if why := path_pattern_problem(path):
            spot.report(f"'{path}': {why}", "paths", i)
    hosts = tuple(h.lower() for h in grant.hosts)
    for i, host in enumerate(hosts):
        if why := host_pattern_problem(host):
            spot.report(why, "hosts", i)
    for i, method in enumerate(grant.methods):
        if not _METHOD.fullmatch(method) or "*" in method:
            spot.report(f"'{method}' is not an HTTP method (omit 'methods' to allow any)", "methods", i)
        elif method != method.upper():
            spot.report(f"methods are case-sensitive: write '{method.upper()}'", "methods", i)
    return replace(grant, hosts=hosts)


def _check_aws(grant: AwsGrant, spot: Spot) -> AwsGrant:
    if not _ROLE_ARN.fullmatch(grant.role_arn):
        spot.report("must look like arn:aws:iam::123456789012:role/NAME", "role_arn")
    if grant.duration is not None and not MIN_DURATION <= grant.duration <= MAX_DURATION:
        spot.report(f"must be between {MIN_DURATION} and {MAX_DURATION} seconds", "duration")
    if grant.gateway and grant.web_identity:
        # AssumeRoleWithWebIdentity needs the caller's own token at STS; at the gateway the caller holds
        # idgate's credentials, never its token.
        spot.report("gateway credentials cannot be combined with web_identity", "gateway")
    if not grant.dynamodb:
        # Without a session policy STS would hand out everything the role may do.
        spot.report("needs at least one dynamodb grant", "dynamodb")
    return grant


def _check_dynamodb(grant: DynamoDbGrant, spot: Spot) -> DynamoDbGrant:
    if not _TABLE.fullmatch(grant.table):
        spot.report("is not a DynamoDB table name ([A-Za-z0-9_.-]{3,255})", "table")
    for i, index in enumerate(grant.indexes):
        if not _TABLE.fullmatch(index):
            spot.report("is not a DynamoDB index name ([A-Za-z0-9_.-]{3,255})", "indexes", i)
    for i, action in enumerate(grant.actions):
        if action not in DYNAMODB_ACTIONS:
            spot.report(f"unknown DynamoDB action '{action}'; known: {', '.join(sorted(DYNAMODB_ACTIONS))}",
                        "actions", i)
    for i, key in enumerate(grant.leading_keys):
        if "${" in key and not _CLAIM_TEMPLATE.fullmatch(key):
            spot.report("a template must be exactly ${claims.NAME}", "leading_keys", i)
    return grant


def _check_rule(rule: Rule, spot: Spot) -> Rule:
    if not rule.http and rule.aws is None:
        spot.report("a rule needs 'http' or 'aws'")
    if rule.effect is Effect.DENY and rule.aws is not None:
        spot.report("deny rules apply to HTTP only in this release; remove 'aws'", "aws")
    return rule


_SCHEMA = Schema(
    keys=MappingProxyType({Who: MappingProxyType(
        {"issuers": "issuer", "subjects": "subject", "client_ids": "client_id"})}),
    one_or_many=frozenset((Who, f) for f in ("issuers", "subjects", "groups", "client_ids", "claims", "claims_contain")),
    internal=frozenset({(Rule, "file"), (Rule, "line")}),
    validators=MappingProxyType({
        Who: _check_who, HttpGrant: _check_http, AwsGrant: _check_aws,
        DynamoDbGrant: _check_dynamodb, Rule: _check_rule,
    }),
    empty_lists=False,
)


def policy_files(directory: Path) -> list[Path]:
    """The files load_policies reads, in the order it reads them."""
    names = [p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith(".")]
    return sorted(names, key=lambda p: p.name)


def load_policies(directory: Path) -> tuple[Rule, ...]:
    """Every rule of every policy file in `directory`; an empty directory gives no rules (deny all)."""
    if not directory.is_dir():
        raise ConfigError([ConfigProblem(str(directory), None, "policy directory does not exist")])
    problems: list[ConfigProblem] = []
    rules: list[Rule] = []
    seen: dict[str, tuple[str, int]] = {}   # rule id → (file, line) where it was first defined
    for path in policy_files(directory):
        try:
            node = read_yaml(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        decoder = Decoder(path, _SCHEMA)
        rules.extend(_decode_file(decoder, node, seen))
        problems.extend(decoder.sorted_problems())
    if problems:
        raise ConfigError(problems)
    return tuple(rules)


def _decode_file(decoder: Decoder, node: yaml.Node | None, seen: dict[str, tuple[str, int]]) -> list[Rule]:
    items = _rule_items(decoder, node)
    rules: list[Rule] = []
    for i, item in enumerate(items):
        rule_id, id_line = _peek_id(item)
        decoder.rule_id = rule_id
        if rule_id is not None:
            if not _RULE_ID.fullmatch(rule_id):   # checked here so it is reported even if decoding fails
                decoder.report(id_line, f"rules[{i}].id: must match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}")
            if rule_id in seen:
                file, line = seen[rule_id]
                decoder.report(line_of(item), f"duplicate rule id '{rule_id}' (first defined at {file}:{line})")
            else:
                seen[rule_id] = (decoder.name, line_of(item))
        rule = decoder.decode(item, Rule, f"rules[{i}]", {"file": decoder.name, "line": line_of(item)})
        if rule is not None:
            rules.append(rule)
    decoder.rule_id = None
    return rules


def _rule_items(decoder: Decoder, node: yaml.Node | None) -> list[yaml.Node]:
    """The nodes under the one top-level key `rules`, reporting any other shape."""
    if node is None:
        decoder.report(None, "file is empty; write 'rules: []' for a file without rules")
        return []
    if not isinstance(node, yaml.MappingNode):
        decoder.report(line_of(node), "expected a mapping with the key 'rules'")
        return []
    items: list[yaml.Node] = []
    found = False
    for key, value in node.value:
        name = key.value if isinstance(key, yaml.ScalarNode) else None
        if name != "rules":
            decoder.report(line_of(key), f"unknown top-level key '{name}'; a policy file has only 'rules'")
        elif found:
            decoder.report(line_of(key), "duplicate key 'rules'")
        elif not isinstance(value, yaml.SequenceNode):
            decoder.report(line_of(value), "rules: expected a list")
            found = True
        else:
            items, found = list(value.value), True
    if not found:
        decoder.report(line_of(node), "missing the top-level key 'rules'")
    return items


def _peek_id(item: yaml.Node) -> tuple[str | None, int]:
    """The rule's id and its line before decoding, so every problem of the rule (and duplicates) can name it."""
    if isinstance(item, yaml.MappingNode):
        for key, value in item.value:
            if getattr(key, "value", None) == "id" and isinstance(value, yaml.ScalarNode) and value.value:
                return str(value.value), line_of(value)
    return None, line_of(item)
