"""Resource limits for proxy.transport.h2.server: the numbers (H2Limits), the rate budgets a peer spends by misbehaving,
and the server-wide admission of connections and calls, with a refusal log that cannot flood."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("idgate.grpc")

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class H2Limits:
    """Every bound the server enforces; the defaults fit Envoy's ext_authz client with room to spare."""

    max_streams: int = 1000               # per connection: streams not yet finished, handler tasks included
    max_calls: int = 4096                 # per server: handler tasks running on all connections together
    max_connections: int = 1024
    max_connections_per_peer: int = 128
    connection_window: int = 1 << 20      # request bytes a connection may have buffered and not yet handed over
    max_header_list: int = 65536
    max_continuations: int = 16           # CONTINUATION frames in one header block
    preface_timeout: float = 10.0         # connect → client preface
    header_timeout: float = 10.0          # HEADERS → the END_HEADERS that completes its block
    stream_timeout: float = 30.0          # HEADERS → our END_STREAM (Envoy's own check timeout is far shorter)
    idle_timeout: float = 300.0           # no stream open and none started: GOAWAY, Envoy reconnects when needed
    write_timeout: float = 30.0           # our writes paused because the peer does not read
    tick: float = 1.0                     # how often the deadlines above are checked
    reset_burst: int = 1000               # streams reset, refused or in error (nghttp2's rapid-reset defaults) ...
    reset_rate: float = 33.0              # ... refilled at this many per second
    settings_burst: int = 32
    settings_rate: float = 1.0
    ping_burst: int = 100
    ping_rate: float = 10.0
    report_interval: float = 10.0         # at most one refusal log line per interval


class Budget:
    """A token bucket: spend() says False once events outrun `burst` plus `rate` per second."""

    __slots__ = ("_burst", "_rate", "_clock", "_tokens", "_at")

    def __init__(self, burst: int, rate: float, clock: Clock) -> None:
        self._burst, self._rate, self._clock = float(burst), rate, clock
        self._tokens = float(burst)
        self._at = clock()

    def spend(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class Refusals:
    """Connections refused at connect or closed for abuse, counted by reason.  The log says it at most once
    per interval (with the counts since), so a peer that reconnects in a loop cannot flood it."""

    def __init__(self, clock: Clock, interval: float, on_refuse: Callable[[str], None] | None) -> None:
        self.counts: Counter[str] = Counter()
        self._unlogged: Counter[str] = Counter()
        self._clock, self._interval, self._on_refuse = clock, interval, on_refuse
        self._logged_at = -math.inf

    def report(self, reason: str, peer: str) -> None:
        self.counts[reason] += 1
        self._unlogged[reason] += 1
        if self._on_refuse is not None:
            self._on_refuse(reason)
        now = self._clock()
        if now - self._logged_at >= self._interval:
            self._logged_at = now
            summary = ", ".join(f"{r}: {n}" for r, n in sorted(self._unlogged.items()))
            self._unlogged.clear()
            log.warning("gRPC connections refused or closed (%s); latest from %s", summary, peer)


class Admission:
    """Server-wide counts: connections in total and per peer, handler tasks running."""

    def __init__(self, limits: H2Limits, admit: Callable[[str], bool] | None, refusals: Refusals) -> None:
        self.limits, self.refusals = limits, refusals
        self._admit = admit
        self._per_peer: Counter[str] = Counter()
        self._total = 0
        self.calls = 0

    def connect(self, peer: str) -> bool:
        """Count a new connection from `peer`, or report why it is refused (and count nothing)."""
        if self._admit is not None and not self._admit(peer):
            reason = "untrusted_peer"
        elif self._total >= self.limits.max_connections:
            reason = "too_many_connections"
        elif self._per_peer[peer] >= self.limits.max_connections_per_peer:
            reason = "too_many_peer_connections"
        else:
            self._total += 1
            self._per_peer[peer] += 1
            return True
        self.refusals.report(reason, peer)
        return False

    def disconnect(self, peer: str) -> None:
        self._total -= 1
        self._per_peer[peer] -= 1
        if not self._per_peer[peer]:
            del self._per_peer[peer]
