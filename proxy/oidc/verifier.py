"""Bearer token → Identity: size cap, strict shape, issuer by exact `iss`, alg allow-list, key by kid,
PyJWS signature check, idgate's own claim checks, and a verified-token cache whose hit costs µs."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from cachetools import TLRUCache

from proxy.config import IssuerConfig
from proxy.core.errors import AuthenticationError, ConfigError, ConfigProblem, DependencyError
from proxy.core.reasons import Reason
from proxy.metrics import Metrics
from proxy.core.model import Identity
from proxy.oidc.claims import check_token_claims, identity_from_claims
from proxy.oidc.issuer import IssuerKeys
from proxy.oidc.keys import SUPPORTED_ALGORITHMS
from proxy.oidc.wire import parse_compact_jws
from proxy.tracing import NO_TRACING, SpanName, Tracing

# A cached verification is re-done at least this often, so a key the issuer withdrew (or a fix to
# the checks after a reload) takes effect within minutes even for long-lived tokens.
CACHE_MAX_TTL = 300.0
CACHE_ATTRIBUTE = "idgate.token.cache"         # hit or miss
# Header parameters that change how the JWS must be processed (RFC 7515 §4.1.11, RFC 7797): we
# implement none of them, so a token that needs them is refused rather than half-understood.
# (jku / x5u / jwk are simply never used to find a key.)
_UNSUPPORTED_HEADERS = ("crit", "b64")


@dataclass(frozen=True, slots=True)
class _Cached:
    identity: Identity
    until: float


def _cached_until(_token: str, entry: _Cached, _now: float) -> float:
    return entry.until


class TokenVerifier:
    """Verifies bearer tokens for a fixed set of issuers; one instance per process."""

    def __init__(self, issuers: Sequence[IssuerConfig], session: aiohttp.ClientSession, metrics: Metrics,
                 *, cache_size: int = 10000, clock: Callable[[], float] = time.time,
                 tracing: Tracing = NO_TRACING) -> None:
        _check_issuers(issuers)
        self._clock = clock
        self._tracing = tracing
        self._cache: TLRUCache[str, _Cached] = TLRUCache(maxsize=cache_size, ttu=_cached_until, timer=clock)
        self._issuers = {
            cfg.issuer: IssuerKeys(cfg, session, metrics, clock, on_keys_removed=self._cache.clear)
            for cfg in issuers
        }
        # The one cap that applies before `iss` is known: the most generous issuer's.
        self._max_token_bytes = max((cfg.max_token_bytes for cfg in issuers), default=0)
        self._hit = metrics.token_cache.labels("hit")
        self._miss = metrics.token_cache.labels("miss")
        self._jws = jwt.PyJWS()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Fetch every issuer's keys once (an issuer that is down shows in status()), then keep them fresh."""
        await asyncio.gather(*(keys.refresh() for keys in self._issuers.values()))
        for issuer, keys in self._issuers.items():
            self._tasks.append(asyncio.create_task(keys.run_refresh_loop(), name=f"jwks-refresh {issuer}"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for keys in self._issuers.values():
            keys.cancel_inflight()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def refresh_keys(self) -> None:
        """Refetch every issuer's keys now (SIGHUP, or an operator who rotated keys); a failure is
        reported in status() and keeps the last good keys, as in the background refresh."""
        await asyncio.gather(*(keys.refresh() for keys in self._issuers.values()))

    def ready(self) -> bool:
        return all(keys.usable_keys() is not None for keys in self._issuers.values())

    def status(self) -> dict[str, dict[str, Any]]:
        return {issuer: keys.status() for issuer, keys in self._issuers.items()}

    async def verify(self, token: str) -> Identity:
        """The Identity of a valid token; AuthenticationError(reason=...) or DependencyError otherwise."""
        with self._tracing.span(SpanName.TOKEN_VERIFY) as span:
            try:
                cached = self._cache[token]
            except KeyError:
                pass
            else:
                self._hit.inc()
                span.set(CACHE_ATTRIBUTE, "hit")
                return cached.identity
            self._miss.inc()
            span.set(CACHE_ATTRIBUTE, "miss")
            identity, until = await self._verify_uncached(token)
            self._cache[token] = _Cached(identity, until)
            return identity

    async def verify_id_token(self, token: str, client_id: str) -> Identity:
        """An ID token from the code flow, by the bearer checks (OIDC Core 3.1.3.7) but for its audience (this
        client, and `azp` this client when present or when there are several) and type (ID tokens have none).
        Never cached: each is verified once, at login or refresh.  The caller checks the nonce."""
        with self._tracing.span(SpanName.TOKEN_VERIFY):
            identity, _ = await self._verify_uncached(token, id_token_of=client_id)
        audience, azp = identity.audience, identity.claims.get("azp")
        if (len(audience) > 1 or azp is not None) and azp != client_id:
            raise AuthenticationError("ID token was issued to another client", reason=Reason.BAD_CLIENT)
        return identity

    async def verify_logout_token(self, token: str, client_id: str) -> dict[str, Any]:
        """The claims of a back-channel logout token for this client: signature, issuer, algorithm, audience
        and times as for an ID token (no subject required: a logout token may name only a `sid`).  The
        caller checks what makes it a logout token (events, sid or sub, no nonce)."""
        header, claims, config = await self._verified(token, id_token_of=client_id)
        check_token_claims(header, claims, config, self._clock())
        return claims

    async def _verify_uncached(self, token: str, *, id_token_of: str | None = None) -> tuple[Identity, float]:
        header, claims, config = await self._verified(token, id_token_of=id_token_of)
        now = self._clock()
        identity = identity_from_claims(header, claims, config, now)
        until = min(identity.expires_at, now + CACHE_MAX_TTL)
        if config.max_age is not None:
            until = min(until, claims["iat"] + config.max_age)
        return identity, until

    async def _verified(self, token: str, *, id_token_of: str | None) -> tuple[dict[str, Any], dict[str, Any],
                                                                                  IssuerConfig]:
        """Header, claims and issuer config of a token whose signature verified with its issuer's key."""
        if len(token) > self._max_token_bytes:
            raise AuthenticationError("token is too large", reason=Reason.TOKEN_TOO_LARGE)
        jws = parse_compact_jws(token)
        iss = jws.payload.get("iss")
        keys = self._issuers.get(iss) if isinstance(iss, str) else None
        if keys is None:
            raise AuthenticationError("token issuer is not accepted", reason=Reason.UNKNOWN_ISSUER)
        config = keys.config
        if id_token_of is not None:
            config = dataclasses.replace(config, audiences=(id_token_of,), require_typ=None, allowed_client_ids=())
        if len(token) > config.max_token_bytes:
            raise AuthenticationError("token is too large", reason=Reason.TOKEN_TOO_LARGE)
        alg = jws.header.get("alg")
        if not isinstance(alg, str) or alg not in config.algorithms:
            raise AuthenticationError("token algorithm is not allowed", reason=Reason.ALG_NOT_ALLOWED)
        if any(name in jws.header for name in _UNSUPPORTED_HEADERS):
            raise AuthenticationError("token uses an unsupported header parameter", reason=Reason.UNSUPPORTED_HEADER)
        kid = jws.header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthenticationError("token kid is not a string", reason=Reason.MALFORMED_TOKEN)
        key = await self._key_for(keys, kid, alg)
        self._check_signature(token, key, alg)
        return jws.header, jws.payload, config

    async def _key_for(self, keys: IssuerKeys, kid: str | None, alg: str) -> jwt.PyJWK:
        key_set = keys.usable_keys()
        if key_set is None:
            # No keys yet (issuer down at start) or too stale: one rate-limited attempt, then 503.
            await keys.refresh_on_demand()
            key_set = keys.usable_keys()
            if key_set is None:
                raise DependencyError("the token issuer's keys are unavailable", reason=Reason.ISSUER_UNAVAILABLE)
        key = key_set.find(kid, alg)
        if key is None:
            await keys.refresh_on_demand()
            key_set = keys.usable_keys()
            key = key_set.find(kid, alg) if key_set is not None else None
        if key is None and not keys.reachable:
            # The issuer cannot be asked: the kid may be a rotated key we could not fetch, so the token is
            # not known to be bad (a client should retry, not discard it).
            raise DependencyError("the token issuer cannot be reached for its signing keys",
                                  reason=Reason.ISSUER_UNAVAILABLE)
        if key is None:
            raise AuthenticationError("token signing key is not known", reason=Reason.UNKNOWN_KID)
        return key

    def _check_signature(self, token: str, key: jwt.PyJWK, alg: str) -> None:
        try:
            self._jws.decode_complete(token, key=key, algorithms=[alg])
        except jwt.InvalidSignatureError as exc:
            raise AuthenticationError("token signature is invalid", reason=Reason.BAD_SIGNATURE) from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationError("token could not be verified", reason=Reason.MALFORMED_TOKEN) from exc


def _check_issuers(issuers: Sequence[IssuerConfig]) -> None:
    problems: list[ConfigProblem] = []
    seen: set[str] = set()
    for cfg in issuers:
        def problem(message: str, cfg: IssuerConfig = cfg) -> None:
            problems.append(ConfigProblem(file="issuers", line=None, message=f"issuer {cfg.issuer}: {message}"))
        if cfg.issuer in seen:
            problem("is configured twice")
        seen.add(cfg.issuer)
        if not cfg.audiences:
            problem("names no audiences")
        if not cfg.algorithms:
            problem("allows no algorithms")
        for alg in cfg.algorithms:
            if alg not in SUPPORTED_ALGORITHMS:
                problem(f"algorithm {alg!r} is not an allowed asymmetric signature algorithm")
    if problems:
        raise ConfigError(problems)
