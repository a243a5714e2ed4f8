"""Where browser sessions live, behind one small interface: the embedded store (this module: in memory, for
one process) and the shared ones (SQLite for the workers of one host, DynamoDB for replicas).

A session is stored under the SHA-256 of its id, never the id itself: whoever reads the store (a backup, a
DynamoDB export) cannot turn an entry into a cookie.  Its tokens are sealed for that key (proxy.sessions.
sealing) before they reach a store, so no store holds a usable refresh token either.  Updates are
compare-and-swap on `version`, so two replicas refreshing one session cannot both win.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Protocol

from proxy.core.errors import DependencyError
from proxy.core.reasons import Reason

MAX_MEMORY_SESSIONS = 100_000
MAX_MEMORY_CLAIMS = 100_000


@dataclass(frozen=True, slots=True)
class StoredSession:
    key: str                          # hex SHA-256 of the session id
    issuer: str
    subject: str
    idp_session: str | None           # the ID token's `sid`: what a back-channel logout names
    created_at: float
    expires_at: float                 # the absolute end (login.session_lifetime): the store's TTL
    seen_at: float                    # the last request, coarsely (idle timeout); not written on every request
    refresh_at: float                 # from here on, requests refresh the tokens first
    valid_until: float                # the identity's claims are good until here (the ID token's expiry)
    claims: Mapping[str, Any]         # the verified ID token's claims: what policy and templates see
    sealed_tokens: str                # refresh token and ID token, sealed for `key`
    version: int = 1

    def advanced(self, **changes: Any) -> StoredSession:
        """The next version of this session, for `SessionStore.update`."""
        return replace(self, version=self.version + 1, **changes)


class SessionStore(Protocol):
    """Every method raises DependencyError (reason session_store_unavailable) when the store cannot answer:
    a request that needs its session then fails closed with 503."""

    async def create(self, session: StoredSession) -> None:
        """Store a new session; its key is fresh (256 random bits), so an existing one is a bug: refuse it."""

    async def get(self, key: str) -> StoredSession | None:
        """The session, or None when there is none or it has expired."""

    async def update(self, session: StoredSession) -> bool:
        """Replace the stored session whose version is session.version - 1; False when it changed or went."""

    async def delete(self, key: str) -> None:
        """End one session (absent: nothing to do)."""

    async def delete_matching(self, issuer: str, *, idp_session: str | None = None,
                              subject: str | None = None) -> int:
        """End the sessions of `issuer` with this `sid`, or (no sid given) of this subject; how many."""

    async def claim(self, key: str, expires_at: float) -> bool:
        """True the first time `key` is claimed before `expires_at`, False ever after: single-use login states."""

    async def release(self, key: str) -> None:
        """Give a claim back (its use failed before it used anything up: the issuer refused the code)."""

    async def close(self) -> None: ...


@dataclass(slots=True)
class MemoryStore:
    """The embedded store of one process.  Bounded: a full store refuses new sessions (503) rather than
    evicting live ones, and a full claim table refuses logins rather than forgetting a used state."""

    clock: Callable[[], float] = time.time
    max_sessions: int = MAX_MEMORY_SESSIONS
    max_claims: int = MAX_MEMORY_CLAIMS
    _sessions: dict[str, StoredSession] = field(default_factory=dict)
    _claims: dict[str, float] = field(default_factory=dict)

    async def create(self, session: StoredSession) -> None:
        if session.key in self._sessions:
            raise ValueError("a new session's key is already stored")
        if len(self._sessions) >= self.max_sessions:
            self._sweep_sessions()
            if len(self._sessions) >= self.max_sessions:
                raise DependencyError("the session store is full", reason=Reason.SESSION_STORE_UNAVAILABLE)
        self._sessions[session.key] = _frozen(session)

    async def get(self, key: str) -> StoredSession | None:
        session = self._sessions.get(key)
        if session is not None and self.clock() >= session.expires_at:
            del self._sessions[key]
            return None
        return session

    async def update(self, session: StoredSession) -> bool:
        current = await self.get(session.key)
        if current is None or current.version != session.version - 1:
            return False
        self._sessions[session.key] = _frozen(session)
        return True

    async def delete(self, key: str) -> None:
        self._sessions.pop(key, None)

    async def delete_matching(self, issuer: str, *, idp_session: str | None = None,
                              subject: str | None = None) -> int:
        doomed = [key for key, s in self._sessions.items() if s.issuer == issuer and (
            s.idp_session == idp_session if idp_session is not None else s.subject == subject)]
        for key in doomed:
            del self._sessions[key]
        return len(doomed)

    async def claim(self, key: str, expires_at: float) -> bool:
        now = self.clock()
        if key in self._claims and self._claims[key] > now:
            return False
        if len(self._claims) >= self.max_claims:
            self._claims = {k: until for k, until in self._claims.items() if until > now}
            if len(self._claims) >= self.max_claims:
                raise DependencyError("too many logins in progress", reason=Reason.SESSION_STORE_UNAVAILABLE)
        self._claims[key] = expires_at
        return True

    async def release(self, key: str) -> None:
        self._claims.pop(key, None)

    async def close(self) -> None:
        self._sessions.clear()

    def _sweep_sessions(self) -> None:
        now = self.clock()
        self._sessions = {key: s for key, s in self._sessions.items() if s.expires_at > now}


def _frozen(session: StoredSession) -> StoredSession:
    # The store keeps its own read-only copy: a caller mutating the claims it passed cannot change a session.
    return replace(session, claims=MappingProxyType(dict(session.claims)))
