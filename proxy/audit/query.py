"""`idgate audit query`'s filters, and the fields of a record they read: which records answer an
investigator's question.  Pure.

A decision and its outcome (one request_id) are one request, and a filter judges the request: the
identity, the decision and the route are on the decision; the rule, tables, keys and time may be on
either (a decision names what a DynamoDB call touched, its outcome what DynamoDB returned or wrote).
So a Scan is found by the items its outcome returned, and an outcome by the identity of its decision.
`event` then says which records of a matching request are shown.  Records are attacker-controlled
data: every reader here takes any JSON shape without raising.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from proxy.aws.gateway_records import KeyRedactor
from proxy.core import caps

RouteMatcher = Callable[[str, str], bool]
"""(host, path) → whether the configuration routes it to the route asked for."""

_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")     # chain.format_ts: comparable as text
_DURATION = re.compile(r"(\d{1,6})([smhdw])\Z")
_CAPPED = "capped-sha256:"
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str, now: datetime) -> str:
    """An ISO 8601 date or timestamp (UTC unless it says otherwise), or a duration before `now` such as
    `24h` or `7d`, as a record time (`2026-11-22T00:00:00.000000Z`) to compare records' `ts` with."""
    if duration := _DURATION.match(text):
        when = now - timedelta(**{_UNITS[duration[2]]: int(duration[1])})
    else:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an ISO 8601 date or timestamp, nor a duration such as 24h or 7d") \
                from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def key_forms(value: str, redaction_key: bytes | None) -> frozenset[str]:
    """The forms a partition key `value` takes in records: as it is (or, when long, its capped form's
    digest), and with the gateway's redaction key its HMAC (aws.gateway.redact_keys)."""
    forms = {value if isinstance(KeyRedactor(None)(value), str) else _CAPPED + caps.value_sha256(value)}
    if redaction_key is not None:
        forms.add(KeyRedactor(redaction_key)(value))
    return frozenset(forms)


@dataclass(frozen=True, slots=True)
class Filters:
    issuer: str | None = None
    subject: str | None = None             # a glob (fnmatch, case-sensitive)
    rule: str | None = None
    decision: str | None = None            # allow | deny
    surface: str | None = None
    route: RouteMatcher | None = None
    table: str | None = None
    keys: frozenset[str] = frozenset()     # key_forms of one partition key value
    since: str | None = None               # parse_when: records at or after it
    until: str | None = None               # ... and before it
    request_id: str | None = None
    event: str | None = None               # decision | outcome | session: which records of a matching request are shown
    session: str | None = None             # a browser session (its 32 hex digits): its decisions and life events

    def matches(self, record: dict[str, Any], decision: dict[str, Any] | None = None) -> bool:
        """Whether `record` (with `decision`, the decision of the outcome `record`, when known) answers."""
        request = (record,) if decision is None else (record, decision)
        decided = record if decision is None else decision
        if self.request_id is not None and not same(record.get("request_id"), self.request_id):
            return False
        if self.surface is not None and record.get("surface") != self.surface:
            return False
        if self.session is not None and decided.get("session") != self.session:
            return False
        if self.decision is not None and decided.get("decision") != self.decision:
            return False
        if (self.issuer is not None or self.subject is not None) and not self._identity_matches(decided):
            return False
        if self.route is not None and not _routed(decided, self.route):
            return False
        if self.rule is not None and not any(same(r, self.rule) for part in request for r in rules_of(part)):
            return False
        if self.table is not None and not any(t == _table_name(self.table) for part in request for t in tables_of(part)):
            return False
        if self.keys and not any(_comparable(k) in self.keys for part in request for k in partition_keys_of(part)):
            return False
        return self.since is None and self.until is None or any(self._in_time(part) for part in request)

    def shows(self, event: object) -> bool:
        return self.event is None or event == self.event

    def _identity_matches(self, record: dict[str, Any]) -> bool:
        identity = _dict(record.get("identity"))
        if self.issuer is not None and not same(identity.get("iss"), self.issuer):
            return False
        subject = identity.get("sub")
        if self.subject is None:
            return True
        # A capped subject is known by its digest only: it matches the glob taken literally.
        return fnmatch.fnmatchcase(subject, self.subject) if isinstance(subject, str) else same(subject, self.subject)

    def _in_time(self, record: dict[str, Any]) -> bool:
        ts = record.get("ts")
        if not isinstance(ts, str) or not _TS.match(ts):
            return False
        return (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)


def same(recorded: object, wanted: str) -> bool:
    """Whether a recorded value is `wanted`: equal, or the capped form of it (proxy.core.caps)."""
    return recorded == wanted or _comparable(recorded) == _CAPPED + caps.value_sha256(wanted)


def _comparable(value: object) -> object:
    """A capped value stands for its full text by the digest it records (a wire value is always a string,
    so no client can forge the capped form)."""
    if isinstance(value, dict) and value.get("capped") is True and isinstance(value.get("sha256"), str):
        return _CAPPED + value["sha256"]
    return value


def _routed(record: dict[str, Any], route: RouteMatcher) -> bool:
    target = _dict(record.get("target"))
    host, path = target.get("host"), target.get("path", target.get("raw_path"))
    return record.get("surface") == "proxy" and isinstance(host, str) and isinstance(path, str) and route(host, path)


# --- the fields a record holds (decision, outcome, credentials), whatever shape a forged one has ------------

def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def listed(value: object) -> list[Any]:
    """A recorded list, or the first items of its capped form (`{"capped": true, "count", "first"}`)."""
    if isinstance(value, dict):
        value = value.get("first")
    return value if isinstance(value, list) else []


def dynamodb_keys(record: dict[str, Any]) -> Iterable[list[Any]]:
    """An outcome's item keys, `[table, partition key, sort key]`, returned and written."""
    view = _dict(record.get("dynamodb"))
    for part in ("returned", "written"):
        for key in listed(_dict(view.get(part)).get("keys")):
            if isinstance(key, list) and key:
                yield key


def touches_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A gateway decision's touches, the denied one included (named in full when the list is cut)."""
    view = _dict(record.get("dynamodb"))
    touches = [t for t in listed(view.get("touches")) if isinstance(t, dict)]
    if isinstance(view.get("denied"), dict):
        touches.append(view["denied"])
    return touches


def tables_of(record: dict[str, Any]) -> list[str]:
    """The DynamoDB tables a record names: a gateway call's, its items', and a credential vend's grants."""
    view = _dict(record.get("dynamodb"))
    found = [*listed(view.get("tables")), *(t.get("table") for t in touches_of(record)),
             *(key[0] for key in dynamodb_keys(record)),
             *(_dict(c).get("table") for c in listed(view.get("consumed_capacity"))),
             *listed(_dict(record.get("aws")).get("tables"))]
    return [_table_name(t) for t in dict.fromkeys(t for t in found if isinstance(t, str))]


def partition_keys_of(record: dict[str, Any]) -> list[Any]:
    """The partition key values a record names (plain, capped or HMAC), touched or returned or written."""
    touched = [k for t in touches_of(record) for k in listed(t.get("keys"))]
    items = [key[1] for key in dynamodb_keys(record) if len(key) > 1]
    return [k for k in touched + items if isinstance(k, str | dict)]


def rules_of(record: dict[str, Any]) -> list[Any]:
    """The rules that decided a record: its rule, each touch's, and the rules a vend's credentials hold."""
    return [record.get("rule"), *(t.get("rule") for t in touches_of(record)),
            *listed(_dict(record.get("aws")).get("rules"))]


def _table_name(table: str) -> str:
    """A table named by ARN → its name (as touches record it)."""
    return table.rpartition(":table/")[2].partition("/")[0] if table.startswith("arn:") else table
