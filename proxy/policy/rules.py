"""The rule model that policy files decode into (see DESIGN §3 for the YAML shape)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType


class Effect(str, Enum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Who:
    """Which identities a rule is about.  All given fields must match (AND); each list is any-of.

    `any: true` is required to match everyone, so an empty `who` can never widen a rule by accident.
    """

    any: bool = False
    issuers: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()          # fnmatch-style globs, case-sensitive
    groups: tuple[str, ...] = ()            # identity has at least one
    client_ids: tuple[str, ...] = ()
    # A string claim equal to one of the values: exact, so a list claim never matches here ...
    claims: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    # ... a list claim holding at least one of the values, only where a rule says so.
    claims_contain: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))

    def has_conditions(self) -> bool:
        return bool(self.issuers or self.subjects or self.groups or self.client_ids or self.claims
                    or self.claims_contain)


@dataclass(frozen=True, slots=True)
class HttpGrant:
    """Endpoints a rule covers.  Empty hosts / methods = any; paths use `*` (one segment) and `**` (any depth)."""

    paths: tuple[str, ...]
    hosts: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DynamoDbGrant:
    table: str
    actions: tuple[str, ...]
    indexes: tuple[str, ...] = ()
    leading_keys: tuple[str, ...] = ()      # literal values or ${claims.NAME} templates
    attributes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AwsGrant:
    role_arn: str
    dynamodb: tuple[DynamoDbGrant, ...] = ()
    web_identity: bool = False              # AssumeRoleWithWebIdentity with the caller's token
    # Vend idgate's own credentials, valid only at idgate's DynamoDB gateway, which authorizes and audits
    # every item touch before re-signing it with STS credentials for this role (DESIGN §5).
    gateway: bool = False
    duration: int | None = None             # seconds; None = config default


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    who: Who
    effect: Effect = Effect.ALLOW
    http: tuple[HttpGrant, ...] = ()
    aws: AwsGrant | None = None
    file: str = ""
    line: int = 0
