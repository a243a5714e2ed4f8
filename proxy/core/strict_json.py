"""JSON as idgate reads what others wrote (tokens, audit lines, DynamoDB calls): UTF-8 only, no duplicate
key at any depth (another reader could take the other value), no NaN or Infinity, finite numbers only.
Pure; every refusal is a ValueError."""

from __future__ import annotations

import json
import math
from typing import Any


def loads(data: str | bytes) -> Any:
    # Bytes are decoded as UTF-8 here: json.loads would guess UTF-16 or UTF-32 from them.
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant,
                          parse_float=_finite_float)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def loads_object(data: str | bytes) -> dict[str, Any]:
    """`loads` for a document that must be a JSON object."""
    value = loads(data)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key in JSON object")
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(literal: str) -> float:
    # A literal beyond a double's range (1e400) parses as infinity: an `exp` that never comes.
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value
