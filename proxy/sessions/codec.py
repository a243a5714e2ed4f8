"""A StoredSession as the text the shared stores keep (SQLite, DynamoDB) and back: one JSON object, so every
store reads back exactly the session it was given, claims included."""

from __future__ import annotations

import dataclasses
import json
from types import MappingProxyType
from typing import Any

from proxy.core.errors import DependencyError
from proxy.core.reasons import Reason
from proxy.sessions.store import StoredSession

_FIELDS = tuple(f.name for f in dataclasses.fields(StoredSession))


def session_text(session: StoredSession) -> str:
    held = {name: getattr(session, name) for name in _FIELDS}
    held["claims"] = dict(session.claims)
    return json.dumps(held, separators=(",", ":"), allow_nan=False)


def session_from_text(text: str) -> StoredSession:
    """The session `session_text` wrote; a row that does not decode is a store gone wrong: fail closed."""
    try:
        held: dict[str, Any] = json.loads(text)
        if not isinstance(held, dict) or set(held) != set(_FIELDS) or not isinstance(held["claims"], dict):
            raise ValueError("not a stored session")
        held["claims"] = MappingProxyType(held["claims"])
        return StoredSession(**held)
    except (ValueError, TypeError) as exc:
        raise DependencyError("a stored session does not decode", reason=Reason.SESSION_STORE_UNAVAILABLE) from exc
