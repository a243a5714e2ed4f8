"""Browser login and sessions: the code flow with PKCE, sealed cookies, the session store, refresh and
logout.  `start_sessions` builds them from the config; the edges reach them through Services."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import aiohttp

from proxy.config import Config
from proxy.core.errors import ConfigError, ConfigProblem
from proxy.sessions.code_flow import CodeFlowClient, load_client_secret
from proxy.sessions.dynamodb_store import DynamoDbStore
from proxy.sessions.manager import LOGIN_COOKIE_PREFIX, IdTokenVerifier, Sessions
from proxy.sessions.sealing import load_sealer
from proxy.sessions.sqlite_store import SqliteStore
from proxy.sessions.store import MemoryStore, SessionStore


def start_sessions(config: Config, session: aiohttp.ClientSession, verifier: IdTokenVerifier,
                   environ: Mapping[str, str], *, workers: int = 1) -> Sessions | None:
    """The Sessions of a config with a `login:` section (reads key and secret files: call it off the loop)."""
    login = config.login
    if login is None:
        return None
    sealer = load_sealer(login.key_file, environ)
    clients = {issuer.issuer: CodeFlowClient(issuer, issuer.client, load_client_secret(issuer.client), session)
               for issuer in config.issuers if issuer.client is not None}
    store: SessionStore
    if login.store.type == "dynamodb":
        assert login.store.table is not None          # the config checks require it
        store = DynamoDbStore.open(login.store.table, login.store.region or config.aws.region, login.store.endpoint)
    elif login.store.path is not None:
        store = SqliteStore.open(login.store.path)
    elif workers > 1:
        # Each worker would hold its own sessions: a browser would be logged out whenever the kernel
        # hands its connection to another worker.
        raise ConfigError([ConfigProblem(str(config.source), None, "login.store: the in-memory session store "
                                         "serves one process: give login.store.path (SQLite) for --workers")])
    else:
        store = MemoryStore()
    return Sessions(login, sealer, store, clients, {i.issuer: i for i in config.issuers}, verifier)


def private_cookie(session_cookie: str) -> Callable[[str], bool]:
    """Whether a cookie (lower-case name) is idgate's own: never passed to an upstream."""
    session, login = session_cookie.lower(), LOGIN_COOKIE_PREFIX.lower()
    return lambda name: name == session or name.startswith(login)


__all__ = ["Sessions", "private_cookie", "start_sessions"]
