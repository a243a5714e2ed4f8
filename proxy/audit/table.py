"""`idgate audit query`'s table: one row per record (time, instance, seq, event, result, rule, identity,
surface, target, keys) for a person to read.  Records come from sources an attacker may have written to,
so a cell is printable ASCII only: nothing in one can move the cursor, colour the terminal, pass for a
gap between columns (two spaces) or look like another character (a Cyrillic `а` for `a`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TextIO

from proxy.audit.query import listed, partition_keys_of, tables_of
from proxy.audit.search import Found

COLUMNS = ("time", "instance", "seq", "event", "result", "rule", "identity", "surface", "target", "keys")
MAX_CELL = 60            # the rest of a value is in --format jsonl
MAX_KEYS = 4
_PLAIN = re.compile(r"(?:[!-\[\]-~]| (?! ))*\Z")   # printable ASCII, no backslash, no two spaces in a row


def escape(text: str, also: str = "") -> str:
    """`text` as printable ASCII: a backslash doubled, a space at either end or next to another as \\x20,
    every other character outside printable ASCII (and those in `also`) as a Python-style escape."""
    if not also and _PLAIN.match(text) and not text.startswith(" ") and not text.endswith(" "):
        return text
    out = []
    last = len(text) - 1
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch == " " and 0 < i < last and text[i - 1] != " " and text[i + 1] != " ":
            out.append(ch)
        elif "!" <= ch <= "~" and ch not in also:
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def cells(found: Found, known_keys: Mapping[str, str]) -> tuple[str, ...]:
    """The row of one record, each cell escaped and cut to MAX_CELL.  `known_keys` maps a key's recorded
    form (an HMAC) to the value the investigator typed, which the row shows instead."""
    record = found.record
    values = (_text(record.get("ts")), escape(found.instance), _text(record.get("seq")), _text(record.get("event")),
              _result(record), _text(record.get("rule")), "", _text(record.get("surface")),
              _target(record, found.decision), _keys(record, known_keys))
    identity = _identity(found.decision or record)       # cut part by part: a subject cannot push its issuer out
    return tuple(identity if column == "identity" else _cut(v, MAX_CELL) for column, v in zip(COLUMNS, values, strict=True))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TableWriter:
    """Rows under a header, in columns as wide as the first `block` rows need (later rows are not held
    back: a wider cell shifts its own row only)."""

    def __init__(self, out: TextIO, known_keys: Mapping[str, str], *, block: int = 100) -> None:
        self._out, self._known_keys, self._block = out, known_keys, block
        self._pending: list[tuple[str, ...]] | None = []
        self._widths: list[int] = []

    def add(self, found: Found) -> None:
        row = cells(found, self._known_keys)
        if self._pending is None:
            self._write(row)
            return
        self._pending.append(row)
        if len(self._pending) >= self._block:
            self.flush()

    def flush(self) -> None:
        """Print what is held back (the header with it); nothing at all when there was no row."""
        if not self._pending:
            return
        rows, self._pending = self._pending, None
        self._widths = [max(len(c) for c in column) for column in zip(COLUMNS, *rows, strict=True)]
        for row in (COLUMNS, *rows):
            self._write(row)
        self._out.flush()

    def _write(self, row: tuple[str, ...]) -> None:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], self._widths, strict=False)]
        self._out.write("  ".join([*padded, row[-1]]) + "\n")


def _text(value: object, also: str = "") -> str:
    """A recorded scalar as a cell: a capped value as its prefix and `...`; absent as `-`."""
    if isinstance(value, dict) and value.get("capped") is True and isinstance(value.get("prefix"), str):
        return escape(value["prefix"], also) + "..."
    if value is None or value == "" or isinstance(value, dict | list):
        return "-"
    return escape(str(value), also)


def _result(record: dict[str, Any]) -> str:
    if record.get("event") == "session":
        return _text(record.get("action"))
    if record.get("event") == "outcome":
        error = record.get("error")
        return _text(record.get("status")) + (":" + _text(error) if error else "")
    decision = _text(record.get("decision"))
    reasons = listed(record.get("reasons"))
    return decision + ":" + _text(reasons[0]) if decision == "deny" and reasons else decision


def _identity(record: dict[str, Any]) -> str:
    identity = record.get("identity")
    if not isinstance(identity, dict):
        return "-"
    # Parentheses escaped in the parts: a subject cannot spell out an issuer of its own.
    subject, issuer = (_cut(_text(identity.get(name), "()"), MAX_CELL * 2 // 3) for name in ("sub", "iss"))
    return f"{subject} ({issuer})"


def _target(record: dict[str, Any], decision: dict[str, Any] | None) -> str:
    dynamodb, aws = record.get("dynamodb"), record.get("aws")
    if isinstance(dynamodb, dict):
        tables = tables_of(record) or (tables_of(decision) if decision else [])
        operation = _text(dynamodb.get("operation"))
        return operation + " " + ",".join(escape(t, ",") for t in tables) if tables else operation
    if isinstance(aws, dict):
        return "role " + _text(aws.get("role_arn") or _target_field(record, "role"))
    target = record.get("target")
    if not isinstance(target, dict):
        return "-"
    path = target.get("path", target.get("raw_path"))
    return f"{_text(target.get('method'))} {_text(target.get('host'))}{_text(path)}"


def _target_field(record: dict[str, Any], name: str) -> Any:
    target = record.get("target")
    return target.get(name) if isinstance(target, dict) else None


def _keys(record: dict[str, Any], known_keys: Mapping[str, str]) -> str:
    """The distinct partition keys a record names, commas escaped in each: the investigator's own value
    for its HMAC, another HMAC cut to 12 hex digits."""
    shown: list[str] = []
    for key in partition_keys_of(record):
        if isinstance(key, str) and key in known_keys:
            text = escape(known_keys[key], ",")
        elif isinstance(key, str) and key.startswith("hmac-sha256:"):
            text = "hmac:" + escape(key.removeprefix("hmac-sha256:")[:12], ",")
        else:
            text = _text(key, ",")
        if text not in shown:
            shown.append(text)
    more = len(shown) - MAX_KEYS
    return ",".join(shown[:MAX_KEYS]) + (f",+{more}" if more > 0 else "") if shown else "-"

