"""Bounded copies of attacker-controlled values for the audit: every string a record builder copies
from a request or a token goes through `capped` (a list through `capped_list`), so a record has a
size bound whatever the client sends (DESIGN §4).  Pure; no I/O.

A limit is in bytes of the record, i.e. of the value's JSON form (ASCII with escapes), so an emoji
counts 12 and a quote 2.  A value within its limit is recorded as it is; any other becomes

    {"capped": true, "chars": <length in characters>, "sha256": "<hex>", "prefix": "<first characters>"}

where sha256 is over the value's bytes as received (UTF-8, undecodable bytes restored from their
surrogate escapes) and the prefix's JSON form takes at most half the limit (at least 32 bytes).  A
value from the wire or a token is always a JSON string, so no client can forge that object.  A list
longer than its count becomes {"capped": true, "count": N, "sha256": <of the list as compact JSON>,
"first": [the first items, each capped]}.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii as _json_string
from typing import Any

# Record bytes per field.  A refusal before authentication records at most a request id, a client
# address, a method, a host and a path from the client: with the fixed fields (~440 bytes) the
# largest such record stays under 2 KB (tests/security/test_audit_flooding.py measures it).
REQUEST_ID = 128          # a trusted proxy's id (idgate accepts up to 128 characters) or idgate's own
CLIENT_ADDR = 64          # the peer, or the address a trusted Envoy reported
METHOD = 16               # a valid method is [A-Z]{1,16}
HOST = 255                # a DNS name is at most 253 characters
PATH = 768                # the normalized path decided on, or the raw path of a refused target
# Claims of a verified token, and what a caller asked for with one.
CLAIM = 256               # iss, sub, client_id
GROUP = 128               # each group name
GROUPS = 64               # groups listed (the verifier accepts up to 256)
JTI = 128
ROLE = 256                # the role a caller asked the credential broker for

_MIN_PREFIX = 32


def capped(value: str, limit: int) -> str | dict[str, Any]:
    """`value` when its JSON form fits in `limit` bytes, else its capped form (module docstring)."""
    # The length test alone decides for long values; the JSON form of a short one is a C call.
    if len(value) <= limit and len(_json_string(value)) <= limit + 2:
        return value
    return {"capped": True, "chars": len(value), "sha256": value_sha256(value),
            "prefix": _prefix(value, max(limit // 2, _MIN_PREFIX))}


def capped_optional(value: str | None, limit: int) -> str | dict[str, Any] | None:
    return None if value is None else capped(value, limit)


def capped_list(values: Sequence[str], count: int, limit: int) -> list[Any] | dict[str, Any]:
    """The items, each capped to `limit`; when there are more than `count`, the capped form of the list."""
    items = [capped(v, limit) for v in values[:count]]
    if len(values) <= count:
        return items
    whole = json.dumps(list(values), ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return {"capped": True, "count": len(values), "sha256": hashlib.sha256(whole).hexdigest(), "first": items}


def value_sha256(value: str) -> str:
    """The `sha256` a capped form records for `value`: how a reader finds a capped value by its full text."""
    try:
        data = value.encode("utf-8", "surrogateescape")     # aiohttp's decoding of bytes that are not UTF-8
    except UnicodeEncodeError:                              # a lone surrogate from JSON ("\ud800" in a claim)
        data = value.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


def _prefix(value: str, budget: int) -> str:
    """The longest prefix of `value` whose JSON form (without quotes) fits in `budget` bytes."""
    fits, over = 0, min(len(value), budget) + 1       # every character takes at least one byte
    if len(_json_string(value[: over - 1])) - 2 <= budget:
        return value[: over - 1]
    while over - fits > 1:                            # the JSON length only grows with the prefix
        mid = (fits + over) // 2
        if len(_json_string(value[:mid])) - 2 <= budget:
            fits = mid
        else:
            over = mid
    return value[:fits]
