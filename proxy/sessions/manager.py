"""Browser sessions: a login started and finished (state, nonce and PKCE verifier sealed in a single-use
login cookie), the session a finished login creates, the identity a session cookie stands for (refreshed
before its ID token expires, single-flight), and its end (logout, back-channel logout, expiry).

Audit records are the pipeline's: this module says what happened, the pipeline writes it down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from proxy.config import IssuerConfig
from proxy.config.schema import LoginConfig
from proxy.core.errors import AuthenticationError, BadRequest, DependencyError, IdgateError
from proxy.core.model import Identity
from proxy.core.reasons import Reason
from proxy.oidc.claims import mapped_identity
from proxy.oidc.wire import parse_compact_jws
from proxy.sessions.code_flow import CodeFlowClient, LoginStart, Tokens
from proxy.sessions.sealing import Sealer
from proxy.sessions.store import SessionStore, StoredSession

LOGIN_COOKIE_PREFIX = "__Host-idgate-login-"
# Login cookies a browser holds at once (the new one included): each is up to ~3.5 KB and rides on every
# request to the host, so without a bound a dozen tabs sent to login would outgrow the Cookie header limit.
MAX_LOGINS_IN_FLIGHT = 4
MAX_CALLBACK_VALUE_CHARS = 4096
# A replica that lost the refresh lease to another waits for that one's result this long at most.
REFRESH_WAIT_SECONDS = 3.0
REFRESH_POLL_SECONDS = 0.1
REFRESH_LEASE_SECONDS = 30.0


BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
LOGOUT_TOKEN_TYPES = ("logout+jwt", "jwt")      # OIDC Back-Channel Logout 1.0 §2.4; plain JWT for older issuers


class IdTokenVerifier(Protocol):
    async def verify_id_token(self, token: str, client_id: str) -> Identity: ...
    async def verify_logout_token(self, token: str, client_id: str) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Logout:
    """What a verified back-channel logout token asks: end these sessions of this issuer."""

    issuer: str
    idp_session: str | None
    subject: str | None


@dataclass(frozen=True, slots=True)
class StartedLogin:
    location: str                     # the issuer's authorization URL
    cookie_name: str
    cookie_value: str
    max_age: int


@dataclass(frozen=True, slots=True)
class SessionIdentity:
    identity: Identity
    key: str                          # the store key (SHA-256 of the session id)
    refreshed: bool = False           # this request refreshed the session's tokens

    @property
    def audit_id(self) -> str:
        return self.key[:32]


@dataclass(frozen=True, slots=True)
class FinishedLogin:
    session: SessionIdentity
    cookie_value: str                 # the new session cookie
    max_age: int
    return_path: str
    login_cookie: str                 # the login cookie to clear


def login_cookie_name(state: str) -> str:
    # One cookie per login in flight (two tabs do not overwrite each other's), found again by its state.
    return LOGIN_COOKIE_PREFIX + hashlib.sha256(state.encode()).hexdigest()[:16]


def store_key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    def __init__(self, config: LoginConfig, sealer: Sealer, store: SessionStore,
                 clients: Mapping[str, CodeFlowClient], issuers: Mapping[str, IssuerConfig],
                 verifier: IdTokenVerifier, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clients = clients
        self._sealer = sealer
        self._store = store
        # A session's identity is mapped from its ID token, whose client is idgate's login client: the
        # issuer's allowed_client_ids are about bearer tokens and do not apply.
        self._issuers = {name: dataclasses.replace(cfg, allowed_client_ids=()) for name, cfg in issuers.items()}
        self._verifier = verifier
        self._clock = clock
        self._refreshing: dict[str, asyncio.Task[StoredSession]] = {}

    # -- login --------------------------------------------------------------------------------

    async def start_login(self, issuer: str, redirect_uri: str, return_path: str) -> StartedLogin:
        start = LoginStart.new()
        client = self.clients[issuer]
        location = await client.authorization_url(start, redirect_uri)
        name = login_cookie_name(start.state)
        timeout = self.config.login_timeout
        value = self._sealer.seal_cookie(name, {
            "state": start.state, "nonce": start.nonce, "verifier": start.verifier, "issuer": issuer,
            "redirect_uri": redirect_uri, "return_path": return_path}, self._clock() + timeout)
        return StartedLogin(location, name, value, int(timeout))

    def logins_to_forget(self, cookies: Iterable[tuple[str, str]]) -> list[str]:
        """The login cookies (of `cookies`, the request's) to clear as a new login starts, so the browser
        holds at most MAX_LOGINS_IN_FLIGHT: those that do not open first, then the oldest.  A login
        forgotten so is refused at its callback as unknown, and the user starts again."""
        logins = {name: value for name, value in cookies if name.startswith(LOGIN_COOKIE_PREFIX)}
        excess = len(logins) - (MAX_LOGINS_IN_FLIGHT - 1)
        if excess <= 0:
            return []

        def expiry(name: str) -> float:
            held = self._sealer.open_cookie(name, logins[name])
            return float(held["exp"]) if held else 0.0

        return sorted(logins, key=expiry)[:excess]

    async def finish_login(self, params: Mapping[str, str], cookies: Mapping[str, str], host: str) -> FinishedLogin:
        """The callback at `host` (its Host header): every check of RFC 6749, 7636, 9207 and OIDC Core 3.1.3,
        then a new session (never one the browser brought: a session cookie set before login does not
        survive it)."""
        state = params.get("state", "")
        if not state or len(state) > MAX_CALLBACK_VALUE_CHARS:
            raise BadRequest("the login answer has no state", reason=Reason.LOGIN_STATE_INVALID)
        name = login_cookie_name(state)
        held = self._sealer.open_cookie(name, cookies.get(name, ""))
        if held is None or not hmac.compare_digest(str(held.get("state", "")).encode(), state.encode()):
            raise BadRequest("this login is unknown or has expired: start again", reason=Reason.LOGIN_STATE_INVALID)
        if urlsplit(str(held.get("redirect_uri", ""))).netloc.lower() != host.strip().lower():
            # The login belongs to the host its code was sent to: brought to another host of this idgate
            # (one whose pages can plant a __Host- cookie there), it must not log that host in.
            raise BadRequest("this login was started on another host", reason=Reason.LOGIN_STATE_INVALID)
        issuer, start = str(held["issuer"]), LoginStart(str(held["state"]), str(held["nonce"]), str(held["verifier"]))
        client = self.clients.get(issuer)
        if client is None:
            raise BadRequest("this login's issuer is no longer configured", reason=Reason.LOGIN_STATE_INVALID)
        # RFC 9207: an answer without the issuer's `iss` may come from another issuer the browser talks to
        # (a mix-up attack), so when the issuer promises to send it, its absence is as bad as a wrong one.
        iss = params.get("iss")
        if iss != issuer and (iss is not None or (await client.endpoints()).iss_parameter):
            raise BadRequest("the login answer is not from this login's issuer", reason=Reason.ISS_MISMATCH)
        if "error" in params:
            raise AuthenticationError("the issuer did not log you in", reason=Reason.LOGIN_REFUSED)
        code = params.get("code", "")
        if not code or len(code) > MAX_CALLBACK_VALUE_CHARS:
            raise BadRequest("the login answer has no code", reason=Reason.LOGIN_STATE_INVALID)
        now = self._clock()
        claim = "login:" + hashlib.sha256(state.encode()).hexdigest()
        if not await self._store.claim(claim, now + self.config.login_timeout):
            raise BadRequest("this login was already used: start again", reason=Reason.LOGIN_STATE_REPLAYED)
        try:
            tokens = await client.exchange_code(code, start, str(held["redirect_uri"]))
        except IdgateError:
            # The issuer refused the code (or could not be asked): nothing was used up, and a claim held for
            # every junk callback would let anyone fill the store's claims and stop every login.
            await self._store.release(claim)
            raise
        identity = await self._verifier.verify_id_token(tokens.id_token, client.config.id)
        if identity.issuer != issuer:
            # OIDC Core 3.1.3.7: the ID token is the login's issuer's (the verifier picks a key by its `iss`).
            raise AuthenticationError("the ID token is another issuer's", reason=Reason.ISS_MISMATCH)
        nonce = identity.claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), start.nonce.encode()):
            raise AuthenticationError("the ID token is not this login's", reason=Reason.NONCE_MISMATCH)
        session_id = secrets.token_urlsafe(32)
        key = store_key(session_id)
        expires_at = now + self.config.session_lifetime
        stored = StoredSession(
            key=key, issuer=issuer, subject=identity.subject, idp_session=_sid(identity), created_at=now,
            expires_at=expires_at, seen_at=now, refresh_at=self._refresh_at(identity, now),
            valid_until=identity.expires_at, claims=dict(identity.claims),
            sealed_tokens=self._seal_tokens(key, tokens, None, expires_at))
        await self._store.create(stored)
        cookie = self._sealer.seal_cookie(self.config.session_cookie, {"sid": session_id}, expires_at)
        return FinishedLogin(SessionIdentity(self.identity_of(stored), key), cookie,
                             int(self.config.session_lifetime), str(held["return_path"]), name)

    # -- requests -----------------------------------------------------------------------------

    def session_key(self, cookie_value: str) -> str | None:
        """The store key a session cookie names, or None when the cookie does not open."""
        held = self._sealer.open_cookie(self.config.session_cookie, cookie_value)
        session_id = held.get("sid") if held else None
        return store_key(session_id) if isinstance(session_id, str) else None

    async def authenticate(self, cookie_value: str) -> SessionIdentity:
        """The identity a session cookie stands for, refreshed first when its ID token is about to expire;
        AuthenticationError when there is no live session, DependencyError when it cannot be known."""
        key = self.session_key(cookie_value)
        if key is None:
            raise AuthenticationError("the session cookie is not valid", reason=Reason.NO_SESSION)
        stored = await self._store.get(key)
        if stored is None:
            raise AuthenticationError("the session has ended", reason=Reason.NO_SESSION)
        now = self._clock()
        if now >= stored.expires_at or now - stored.seen_at > self.config.idle_timeout:
            await self._store.delete(key)
            raise AuthenticationError("the session has expired", reason=Reason.SESSION_EXPIRED)
        refreshed = False
        if now >= stored.refresh_at:
            stored, refreshed = await self._refreshed(stored), True
        elif now - stored.seen_at > self.config.idle_timeout / 8:
            # Coarse: a write every eighth of the idle timeout, not on every request.  Losing the race
            # to a refresh is fine (the refresh moved seen_at too).
            await self._store.update(stored.advanced(seen_at=now))
        return SessionIdentity(self.identity_of(stored), key, refreshed)

    async def discard(self, cookie_value: str) -> StoredSession | None:
        """End the session a cookie names, here only (a new login in the same browser replaces it)."""
        key = self.session_key(cookie_value)
        stored = await self._store.get(key) if key is not None else None
        if stored is not None:
            await self._store.delete(stored.key)
        return stored

    async def end(self, cookie_value: str) -> tuple[StoredSession | None, str | None]:
        """Logout: the session ended here, and the issuer's logout URL for it (None without one)."""
        key = self.session_key(cookie_value)
        stored = await self._store.get(key) if key else None
        if stored is None:
            return None, None
        await self._store.delete(stored.key)
        tokens = self._sealer.open_stored(stored.key, stored.sealed_tokens) or {}
        client = self.clients.get(stored.issuer)
        id_token = tokens.get("id_token")
        url = await client.end_session_url(id_token if isinstance(id_token, str) else None) if client else None
        return stored, url

    async def verify_logout_token(self, token: str) -> Logout:
        """OIDC Back-Channel Logout 1.0 §2.6: signed by a configured issuer for its login client, the
        back-channel event, a `sid` or `sub`, and no `nonce` (so no ID token can pass for one)."""
        try:
            issuer = parse_compact_jws(token).payload.get("iss")
            client = self.clients.get(issuer) if isinstance(issuer, str) else None
            if client is None:
                raise AuthenticationError("the logout token's issuer has no login client here",
                                          reason=Reason.UNKNOWN_ISSUER)
            claims = await self._verifier.verify_logout_token(token, client.config.id)
            typ = parse_compact_jws(token).header.get("typ")
        except AuthenticationError as err:
            raise BadRequest(f"the logout token is not valid ({err.reason})", reason=Reason.LOGOUT_TOKEN_INVALID) from err
        events = claims.get("events")
        sid, sub = claims.get("sid"), claims.get("sub")
        problem = None
        if typ is not None and (not isinstance(typ, str) or typ.lower().removeprefix("application/") not in LOGOUT_TOKEN_TYPES):
            problem = "is of another type"
        elif not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_EVENT), dict):
            problem = "carries no back-channel logout event"
        elif "nonce" in claims:
            problem = "has a nonce (an ID token?)"
        elif not isinstance(claims.get("jti"), str) or not isinstance(claims.get("iat"), int | float):
            problem = "has no jti or iat"
        elif not (isinstance(sid, str) and sid) and not (isinstance(sub, str) and sub):
            problem = "names neither a session (sid) nor a subject (sub)"
        elif sid is not None and not isinstance(sid, str) or sub is not None and not isinstance(sub, str):
            problem = "has a sid or sub that is not a string"
        if problem is not None:
            raise BadRequest(f"the logout token {problem}", reason=Reason.LOGOUT_TOKEN_INVALID)
        # §2.6 makes this check optional; here it is not: a logout token seen once (a log, a proxy on the
        # way) would otherwise end the sessions of the subject's next login for as long as it is valid.
        seen = hashlib.sha256(f"{issuer}\0{claims['jti']}".encode()).hexdigest()
        if not await self._store.claim("logout:" + seen, float(claims["exp"])):
            raise BadRequest("the logout token was already used", reason=Reason.LOGOUT_TOKEN_INVALID)
        return Logout(str(issuer), sid if isinstance(sid, str) and sid else None,
                      sub if isinstance(sub, str) and sub else None)

    async def end_matching(self, logout: Logout) -> int:
        """End what a logout token names: its `sid`'s sessions, or (no sid) every session of its subject."""
        return await self._store.delete_matching(logout.issuer, idp_session=logout.idp_session,
                                                 subject=logout.subject)

    async def close(self) -> None:
        for task in list(self._refreshing.values()):
            task.cancel()
        await asyncio.gather(*self._refreshing.values(), return_exceptions=True)
        await self._store.close()

    # -- refresh ------------------------------------------------------------------------------

    async def _refreshed(self, stored: StoredSession) -> StoredSession:
        task = self._refreshing.get(stored.key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._refresh(stored), name="session-refresh")
            self._refreshing[stored.key] = task
            key = stored.key
            task.add_done_callback(lambda _done: self._refreshing.pop(key, None))
        # Shielded: one request going away must not cancel the refresh the others wait for.
        return await asyncio.shield(task)

    async def _refresh(self, stored: StoredSession) -> StoredSession:
        now = self._clock()
        tokens = self._sealer.open_stored(stored.key, stored.sealed_tokens) or {}
        refresh_token = tokens.get("refresh_token")
        if not isinstance(refresh_token, str):
            if now < stored.valid_until:
                return stored
            await self._store.delete(stored.key)
            raise AuthenticationError("the session has expired", reason=Reason.SESSION_EXPIRED)
        # One replica refreshes (a lease in the store): two refreshes with one rotating refresh token
        # would make the issuer see a reuse and revoke the whole grant.
        if not await self._store.claim(f"refresh:{stored.key}:{stored.version}", now + REFRESH_LEASE_SECONDS):
            return await self._refreshed_elsewhere(stored)
        client = self.clients.get(stored.issuer)
        if client is None:
            raise AuthenticationError("the session's issuer is no longer configured", reason=Reason.NO_SESSION)
        try:
            answer = await client.refresh(refresh_token)
            identity = await self._verifier.verify_id_token(answer.id_token, client.config.id)
            if identity.issuer != stored.issuer or identity.subject != stored.subject:
                raise AuthenticationError("the refreshed ID token is another user's", reason=Reason.SESSION_REVOKED)
        except AuthenticationError:
            await self._store.delete(stored.key)
            raise
        except DependencyError:
            if now < stored.valid_until:
                return stored          # the issuer is down: the claims are still good for a while
            raise
        updated = stored.advanced(
            seen_at=now, refresh_at=self._refresh_at(identity, now), valid_until=identity.expires_at,
            claims=dict(identity.claims), idp_session=_sid(identity) or stored.idp_session,
            sealed_tokens=self._seal_tokens(stored.key, answer, refresh_token, stored.expires_at))
        if await self._store.update(updated):
            return updated
        current = await self._store.get(stored.key)
        if current is None:
            raise AuthenticationError("the session has ended", reason=Reason.NO_SESSION)
        return current

    async def _refreshed_elsewhere(self, stored: StoredSession) -> StoredSession:
        deadline = self._clock() + REFRESH_WAIT_SECONDS
        while True:
            current = await self._store.get(stored.key)
            if current is None:
                raise AuthenticationError("the session has ended", reason=Reason.NO_SESSION)
            if current.version > stored.version or self._clock() < current.valid_until:
                return current
            if self._clock() >= deadline:
                raise DependencyError("the session is being refreshed elsewhere", reason=Reason.ISSUER_UNAVAILABLE)
            await asyncio.sleep(REFRESH_POLL_SECONDS)

    # -- helpers ------------------------------------------------------------------------------

    def _refresh_at(self, identity: Identity, now: float) -> float:
        return max(now, identity.expires_at - self.config.refresh_margin)

    def _seal_tokens(self, key: str, tokens: Tokens, previous_refresh: str | None, expires_at: float) -> str:
        # An issuer that does not rotate refresh tokens answers a refresh without one: keep the one we have.
        held: dict[str, Any] = {"id_token": tokens.id_token,
                                "refresh_token": tokens.refresh_token or previous_refresh}
        return self._sealer.seal_stored(key, held, expires_at)

    def identity_of(self, stored: StoredSession) -> Identity:
        issuer = self._issuers[stored.issuer]
        client = self.clients[stored.issuer]
        identity = mapped_identity(stored.claims, issuer, (client.config.id,), min(stored.valid_until, stored.expires_at))
        return dataclasses.replace(identity, client_id=client.config.id)


def _sid(identity: Identity) -> str | None:
    sid = identity.claims.get("sid")
    return sid if isinstance(sid, str) and 0 < len(sid) <= 255 else None
