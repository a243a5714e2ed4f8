"""What the shipper tracks of one sink between rounds (on the loop): how far it got, the newest anchor it
holds, its backoff after failures, whether it halted, and how far behind it is."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

from proxy.audit.aws_json import ShipError
from proxy.audit.ship_state import StoredAnchor
from proxy.metrics import Metrics

_log = logging.getLogger("idgate.audit.shipping")

MAX_BACKOFF = 60.0


def loop_time() -> float:
    return asyncio.get_running_loop().time()


@dataclass(slots=True)
class SinkProgress:
    name: str
    seq: int = 0                     # the last record it holds
    anchor: StoredAnchor | None = None   # the newest anchor it holds
    retry_at: float = 0.0            # loop time: no call before this
    failures: int = 0
    halted: str | None = None
    behind_since: float | None = None
    lag_records: int = 0

    def may_try(self, now: float) -> bool:
        return self.halted is None and now >= self.retry_at

    def failed(self, now: float, metrics: Metrics, error: ShipError) -> None:
        """Back off exponentially, with jitter, at most MAX_BACKOFF; say it in the log, less as it goes on."""
        self.failures += 1
        delay = min(MAX_BACKOFF, 0.5 * 2 ** min(self.failures, 10)) * random.uniform(0.5, 1.0)
        self.retry_at = now + delay
        metrics.audit_ship_failures.labels(self.name, error.code[:64]).inc()
        level = logging.WARNING if self.failures <= 3 or self.failures % 20 == 0 else logging.DEBUG
        _log.log(level, "audit shipping to %s failed (%s), attempt %d; retrying in %.1f s",
                 self.name, error, self.failures, delay)

    def succeeded(self, metrics: Metrics, records: int) -> None:
        if self.failures:
            _log.info("audit shipping to %s works again after %d failed attempt(s)", self.name, self.failures)
        self.failures, self.retry_at = 0, 0.0
        metrics.audit_shipped.labels(self.name).inc(records)

    def halt(self, metrics: Metrics, why: str | ShipError) -> None:
        """Stop shipping to this sink for good (a broken local chain, other bytes under a shipped name)."""
        why = why.message if isinstance(why, ShipError) else why
        self.halted = why
        metrics.audit_ship_halted.labels(self.name).set(1)
        _log.error("audit shipping to %s halted: %s; segments it has not shipped are kept", self.name, why)

    def note_lag(self, now: float, behind: int) -> None:
        self.lag_records = max(0, behind)
        if behind <= 0:
            self.behind_since = None
        elif self.behind_since is None:
            self.behind_since = now
