"""The embedded store for the workers of one host (`login.store.path`): one SQLite file they all open, so a
browser keeps its session whichever worker the kernel hands its connection to, and a logout that reaches one
worker ends the session for all of them.

Each process holds one connection, used only from its own single worker thread: sqlite3 blocks, so no call
runs on the event loop, and one thread means calls of one process never contend for the connection.
Processes share the file through SQLite's own locking: WAL (readers never wait for the writer), a busy
timeout (a writer waits its turn instead of failing), and every change one statement, so a compare-and-swap
is atomic across processes.  Expired rows are hidden on read and purged now and then on write.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from proxy.core.errors import DependencyError, StartupError
from proxy.core.reasons import Reason
from proxy.sessions.codec import session_from_text, session_text
from proxy.sessions.store import StoredSession

BUSY_TIMEOUT_MS = 5000       # a writer waits this long for another process's write before the store is "down"
PURGE_SECONDS = 60.0         # expired rows are deleted at most this often per process

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT PRIMARY KEY, issuer TEXT NOT NULL, subject TEXT NOT NULL, idp_session TEXT,
    expires_at REAL NOT NULL, version INTEGER NOT NULL, body TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_by_idp_session ON sessions (issuer, idp_session);
CREATE INDEX IF NOT EXISTS sessions_by_subject ON sessions (issuer, subject);
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires_at);
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, expires_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS claims_by_expiry ON claims (expires_at);
"""

T = TypeVar("T")


def _connect(path: Path) -> sqlite3.Connection:
    if not path.parent.is_dir():
        raise StartupError(f"login.store.path: the directory {path.parent} does not exist: create it")
    # Created 0600 before SQLite sees it (SQLite gives its -wal and -shm files the same mode): the rows
    # hold who is logged in, and their claims.
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StartupError(f"login.store.path: cannot open {path}: {exc.strerror}") from exc
    try:
        mode = os.fstat(fd).st_mode
    finally:
        os.close(fd)
    if not stat.S_ISREG(mode):
        raise StartupError(f"login.store.path: {path} is not a regular file")
    if mode & 0o077:
        raise StartupError(f"login.store.path: {path} is open to group or others: chmod 600 it")
    try:
        connection = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if connection.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
                raise StartupError(f"login.store.path: {path} cannot be put in WAL mode (a network file system?)")
            # FULL: a logout that was answered must survive a power cut too, or the session comes back.
            connection.execute("PRAGMA synchronous = FULL")
            connection.executescript(_SCHEMA)
        except BaseException:
            connection.close()
            raise
    except sqlite3.Error as exc:
        raise StartupError(f"login.store.path: {path} is not a usable SQLite file: {exc}") from exc
    return connection


class SqliteStore:
    """A SessionStore on one SQLite file; build it with `SqliteStore.open` (blocking: call it off the loop)."""

    def __init__(self, connection: sqlite3.Connection, executor: ThreadPoolExecutor,
                 clock: Callable[[], float]) -> None:
        self._db = connection
        self._executor = executor
        self._clock = clock
        self._purged_at = 0.0          # only touched on the store's thread
        self._closed = False

    @classmethod
    def open(cls, path: Path, *, clock: Callable[[], float] = time.time) -> SqliteStore:
        executor = ThreadPoolExecutor(1, thread_name_prefix="idgate-session-store")
        try:
            # Connected on the thread that will use it: sqlite3 refuses a connection from another thread.
            connection = executor.submit(_connect, path).result()
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(connection, executor, clock)

    async def create(self, session: StoredSession) -> None:
        if not await self._run(self._insert, session):
            raise ValueError("a new session's key is already stored")

    async def get(self, key: str) -> StoredSession | None:
        text = await self._run(self._select, key, self._clock())
        return session_from_text(text) if text is not None else None

    async def update(self, session: StoredSession) -> bool:
        return await self._run(self._swap, session, self._clock())

    async def delete(self, key: str) -> None:
        await self._run(self._change, "DELETE FROM sessions WHERE key = ?", (key,))

    async def delete_matching(self, issuer: str, *, idp_session: str | None = None,
                              subject: str | None = None) -> int:
        if idp_session is not None:
            return await self._run(self._change, "DELETE FROM sessions WHERE issuer = ? AND idp_session = ?",
                                   (issuer, idp_session))
        return await self._run(self._change, "DELETE FROM sessions WHERE issuer = ? AND subject = ?",
                               (issuer, subject))

    async def claim(self, key: str, expires_at: float) -> bool:
        # One statement: two workers claiming one login state at once cannot both insert it.
        changed = await self._run(self._change, "INSERT INTO claims (key, expires_at) VALUES (?, ?) "
                                  "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at "
                                  "WHERE claims.expires_at <= ?", (key, expires_at, self._clock()))
        return changed == 1

    async def release(self, key: str) -> None:
        await self._run(self._change, "DELETE FROM claims WHERE key = ?", (key,))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._db.close)
        finally:
            self._executor.shutdown(wait=False)

    # -- on the store's thread ----------------------------------------------------------------

    async def _run(self, call: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise DependencyError("the session store is closed", reason=Reason.SESSION_STORE_UNAVAILABLE)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(call, *args))
        except sqlite3.Error as exc:
            raise DependencyError(f"the session store failed: {type(exc).__name__}",
                                  reason=Reason.SESSION_STORE_UNAVAILABLE) from exc

    def _insert(self, session: StoredSession) -> bool:
        self._purge_now_and_then()
        try:
            self._db.execute("INSERT INTO sessions (key, issuer, subject, idp_session, expires_at, version, body) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)", (session.key, *_columns(session)))
        except sqlite3.IntegrityError:
            return False
        return True

    def _select(self, key: str, now: float) -> str | None:
        row = self._db.execute("SELECT body FROM sessions WHERE key = ? AND expires_at > ?", (key, now)).fetchone()
        return str(row[0]) if row is not None else None

    def _swap(self, session: StoredSession, now: float) -> bool:
        cursor = self._db.execute(
            "UPDATE sessions SET issuer = ?, subject = ?, idp_session = ?, expires_at = ?, version = ?, body = ? "
            "WHERE key = ? AND version = ? AND expires_at > ?",
            (*_columns(session), session.key, session.version - 1, now))
        return cursor.rowcount == 1

    def _change(self, statement: str, args: tuple[object, ...]) -> int:
        self._purge_now_and_then()
        return self._db.execute(statement, args).rowcount

    def _purge_now_and_then(self) -> None:
        now = self._clock()
        if now - self._purged_at < PURGE_SECONDS:
            return
        self._purged_at = now
        self._db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
        self._db.execute("DELETE FROM claims WHERE expires_at <= ?", (now,))


def _columns(session: StoredSession) -> tuple[object, ...]:
    return (session.issuer, session.subject, session.idp_session, session.expires_at, session.version,
            session_text(session))
