"""One issuer's signing keys: discovery, JWKS fetch (aiohttp, bounded), background refresh with
jitter, rate-limited refetch on an unknown kid, and last-good keys kept up to `max_stale`."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from typing import Any

import aiohttp
import yarl

from proxy.config import IssuerConfig
from proxy.metrics import Metrics
from proxy.oidc.fetch import MAX_DOCUMENT_BYTES, FetchError, get_json
from proxy.oidc.keys import JwksError, KeySet, parse_jwks

log = logging.getLogger(__name__)

RETRY_MIN = 1.0                       # first retry after a failed fetch; doubles up to refresh_interval
RETRY_MAX_WITHOUT_KEYS = 5.0          # ... but no further than this while no usable keys are held


class IssuerKeys:
    """Holds the current KeySet of one issuer and keeps it fresh."""

    def __init__(self, config: IssuerConfig, session: aiohttp.ClientSession, metrics: Metrics,
                 clock: Callable[[], float], on_keys_removed: Callable[[], None]) -> None:
        self.config = config
        self._session = session
        self._clock = clock
        self._on_keys_removed = on_keys_removed
        self._fetch_ok = metrics.jwks_fetches.labels(config.issuer, "ok")
        self._fetch_error = metrics.jwks_fetches.labels(config.issuer, "error")
        self._key_gauge = metrics.jwks_keys.labels(config.issuer)
        self._keys: KeySet | None = None
        self._jwks_uri: str | None = config.jwks_uri
        self._last_success: float | None = None
        self._last_error: str | None = None
        self._failures = 0
        self._last_unknown_kid_fetch: float | None = None
        self._inflight: asyncio.Task[None] | None = None   # the shared fetch; kept (done) afterwards

    # -- readiness ------------------------------------------------------------------------------

    def usable_keys(self) -> KeySet | None:
        """The keys, unless there are none or they are older than max_stale."""
        if self._keys is None or self._last_success is None:
            return None
        if self._clock() - self._last_success > self.config.max_stale:
            return None
        return self._keys

    @property
    def reachable(self) -> bool:
        """Whether the last fetch succeeded: if not, a key we lack may be one we could not fetch."""
        return self._failures == 0

    def status(self) -> dict[str, Any]:
        return {
            "ready": self.usable_keys() is not None,
            "keys": len(self._keys) if self._keys is not None else 0,
            "last_success": self._last_success,
            "last_error": self._last_error,
        }

    # -- fetching -------------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Fetch the keys now; concurrent callers share one fetch.  Never raises a fetch failure."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._refresh_once())
        # Shielded: a caller's cancellation (client went away) must not cancel the shared fetch.
        await asyncio.shield(self._inflight)

    async def refresh_on_demand(self) -> None:
        """A request needs keys we do not hold: refetch, one fetch at a time.  While usable keys are held
        and the issuer answered the last fetch (an unknown kid), at most once per unknown_kid_min_interval,
        so forged kids can never make us fetch per request; while none are (stale, or none yet) or the last
        fetch failed (the kid may be a key we could not fetch: the caller answers 503, Retry-After 1), at
        most once per RETRY_MIN, so the first request after the issuer is back ends the outage instead of
        waiting out an interval.  An attacker's kids can thus cost an issuer that is failing one fetch a
        second per process, and one that answers one per interval."""
        if self._inflight is not None and not self._inflight.done():
            await asyncio.shield(self._inflight)
            return
        now = self._clock()
        last = self._last_unknown_kid_fetch
        interval = self.config.unknown_kid_min_interval if self.usable_keys() is not None and self.reachable \
            else min(RETRY_MIN, self.config.unknown_kid_min_interval)
        if last is not None and now - last < interval:
            return
        self._last_unknown_kid_fetch = now
        await self.refresh()

    async def run_refresh_loop(self) -> None:
        """Refresh every refresh_interval (jittered), sooner while the issuer keeps failing: doubling from
        RETRY_MIN, at most RETRY_MAX_WITHOUT_KEYS apart once no usable keys are held."""
        while True:
            await asyncio.sleep(self._next_delay())
            await self.refresh()

    def _next_delay(self) -> float:
        interval = self.config.refresh_interval
        if self._failures:
            interval = min(interval, RETRY_MIN * 2 ** min(self._failures - 1, 16))
            # Without usable keys idgate is not ready, so a load balancer sends no request that could
            # refetch: this retry alone ends the outage, and it must come seconds, not minutes, after the
            # issuer is back.  Held keys going stale during a long backoff count too.
            interval = min(interval, max(RETRY_MAX_WITHOUT_KEYS, self._seconds_until_stale()))
        # Jitter keeps many replicas (and many issuers) from fetching in lock-step.
        return interval * random.uniform(0.8, 1.0)

    def _seconds_until_stale(self) -> float:
        if self._last_success is None:
            return 0.0
        return self._last_success + self.config.max_stale - self._clock()

    def cancel_inflight(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()

    async def _refresh_once(self) -> None:
        try:
            keys = await self._fetch_keys()
        except FetchError as exc:
            self._record_failure(str(exc))
            log.warning("jwks fetch failed for issuer %s: %s", self.config.issuer, exc)
            return
        except Exception:
            # A bug here must not kill the refresh loop or reach a request as a foreign exception.
            self._record_failure("unexpected error")
            log.exception("jwks fetch failed for issuer %s", self.config.issuer)
            return
        removed = self._keys is not None and not self._keys.kids <= keys.kids
        self._keys = keys
        self._last_success = self._clock()
        self._last_error = None
        self._failures = 0
        self._fetch_ok.inc()
        self._key_gauge.set(len(keys))
        if removed:
            self._on_keys_removed()

    def _record_failure(self, message: str) -> None:
        self._failures += 1
        self._last_error = message
        self._fetch_error.inc()

    async def _fetch_keys(self) -> KeySet:
        if self.config.jwks_file is not None:
            document = await asyncio.to_thread(_read_json_file, str(self.config.jwks_file))
        else:
            if self._jwks_uri is None:
                self._jwks_uri = await self._discover_jwks_uri()
            try:
                document = await get_json(self._session, self._jwks_uri)
            except FetchError:
                if self.config.jwks_uri is None:
                    self._jwks_uri = None  # rediscover next time: the issuer may have moved its JWKS
                raise
        try:
            return parse_jwks(document, self.config.algorithms)
        except JwksError as exc:
            raise FetchError(str(exc)) from exc

    async def _discover_jwks_uri(self) -> str:
        document = await get_json(self._session, self.config.issuer.rstrip("/") + "/.well-known/openid-configuration")
        if not isinstance(document, dict) or document.get("issuer") != self.config.issuer:
            # OIDC Discovery §4.3: a document for another issuer must not supply our keys.
            raise FetchError("discovery document names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or yarl.URL(jwks_uri).scheme not in ("https", "http"):
            raise FetchError("discovery document has no usable jwks_uri")
        return jwks_uri

def _read_json_file(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise FetchError(f"cannot read JWKS file: {exc.strerror}") from exc
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise FetchError("JWKS file is too large")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise FetchError("JWKS file is not JSON") from exc
