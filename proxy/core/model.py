"""Frozen data shared by every layer: who is asking (Identity), what they ask (AccessRequest),
and what idgate answered (Decision).  No I/O, no third-party imports.

The records built once per request (AccessRequest, Decision; admission's Received and Admitted) are
NamedTuples: as immutable and typed as a frozen dataclass, but built in a quarter of the time (a frozen
dataclass sets each field through object.__setattr__: ~1 µs a field here, on every request)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, NamedTuple

from proxy.core import caps
from proxy.core.reasons import Reason

EMPTY_CLAIMS: Mapping[str, Any] = MappingProxyType({})


class Surface(str, Enum):
    """The edge adapter a request came through; recorded in every audit record."""

    PROXY = "proxy"
    FORWARD_AUTH = "forward_auth"
    EXT_AUTHZ_HTTP = "ext_authz_http"
    EXT_AUTHZ_GRPC = "ext_authz_grpc"
    CREDENTIALS = "credentials"
    DYNAMODB = "dynamodb"
    LOGIN = "login"                 # browser login: its callback, logout and back-channel logout


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified token's subject.  `claims` is read-only and used for policy templates only."""

    issuer: str
    subject: str
    audience: tuple[str, ...]
    client_id: str | None
    groups: tuple[str, ...]
    expires_at: float
    claims: Mapping[str, Any] = field(default_factory=lambda: EMPTY_CLAIMS)
    # Built once per identity, not once per record: the verifier keeps an identity per token.
    _audit_view: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_audit_view", {
            "iss": caps.capped(self.issuer, caps.CLAIM), "sub": caps.capped(self.subject, caps.CLAIM),
            "client_id": caps.capped_optional(self.client_id, caps.CLAIM),
            "groups": caps.capped_list(self.groups, caps.GROUPS, caps.GROUP)})

    def audit_view(self) -> dict[str, Any]:
        """What the audit log may hold about an identity: never the raw claims, and each value capped.
        Every record of this identity shares the one dict: never mutate it."""
        return self._audit_view


class AccessRequest(NamedTuple):
    """The neutral request every surface builds before policy runs.

    `path` is already normalized (see proxy.core.paths); `host` is lower-case without port.  The query string
    is not part of it: it never takes part in a decision, and the audit never holds it (it may carry secrets).
    """

    surface: Surface
    request_id: str
    method: str
    host: str
    path: str
    client_addr: str

    def audit_target(self) -> dict[str, Any]:
        return {"method": caps.capped(self.method, caps.METHOD), "host": caps.capped(self.host, caps.HOST),
                "path": caps.capped(self.path, caps.PATH)}


class Decision(NamedTuple):
    """What the policy engine decided, as data.  `rule_id` is None when nothing matched (default deny)."""

    allowed: bool
    rule_id: str | None
    reasons: tuple[Reason, ...]
    identity: Identity | None = None


@dataclass(frozen=True, slots=True)
class Touch:
    """One thing a DynamoDB call does to one table (or index), as IAM's fine-grained access control sees it.

    A call is one or more touches (a batch or a transaction: one per element); proxy.aws.dynamodb builds them."""

    table: str                            # the table's name (an ARN already reduced to it)
    index: str | None                     # the index a Query or Scan reads, if any
    action: str                           # the IAM action: GetItem, Query, ConditionCheckItem, PartiQLSelect, ...
    keys: tuple[str, ...]                 # partition-key values as dynamodb:LeadingKeys sees them; () = none (a Scan)
    attributes: frozenset[str] | None     # top-level attribute names read or written; None = all of them
    whole_item: bool = False              # puts or deletes a whole item (PutItem, DeleteItem, INSERT, DELETE)
    mapped: bool = True                   # the index (if any) is keyed by the table's partition key
