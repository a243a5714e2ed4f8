"""Routes: the upstream route for a host and normalized path (host-specific routes before catch-all
ones, then the longest path prefix on a segment boundary), and the connections each route may hold."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from proxy.config import RouteConfig
from proxy.core.errors import DependencyError, NotFound
from proxy.core.reasons import Reason


def _prefix_matches(prefix: str, path: str) -> bool:
    if prefix == "/" or path == prefix:
        return True
    base = prefix.rstrip("/")
    return path.startswith(base + "/")


class RouteTable:
    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        # Most specific first: a named host beats "any host", a longer prefix beats a shorter one.
        self._routes = sorted(routes, key=lambda r: (not r.hosts, -len(r.path_prefix)))

    def match(self, host: str, path: str) -> RouteConfig:
        for route in self._routes:
            if route.hosts and host not in route.hosts:
                continue
            if _prefix_matches(route.path_prefix, path):
                return route
        raise NotFound("no route for this host and path", reason=Reason.NO_ROUTE)


class RouteSlots:
    """The upstream connections each route may hold: a request holds one from before it is forwarded
    until its answer (or its WebSocket) ends, so one route cannot take every connection, one caller
    (slow bodies, idle WebSockets) cannot take a route's, and a request that cannot get one in time is
    answered, not parked."""

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self._slots = {route.name: asyncio.Semaphore(route.max_connections) for route in routes}
        self._held: Counter[tuple[str, object]] = Counter()     # (route, caller) -> connections held

    @asynccontextmanager
    async def hold(self, route: RouteConfig, caller: object) -> AsyncIterator[None]:
        key = (route.name, caller)
        if self._held[key] >= route.max_connections_per_identity:
            raise DependencyError("this caller holds its share of the upstream's connections; try again",
                                  reason=Reason.IDENTITY_BUSY)
        slots = self._slots[route.name]
        self._held[key] += 1
        try:
            try:
                async with asyncio.timeout(route.pool_timeout):
                    await slots.acquire()
            except TimeoutError:
                raise DependencyError("the upstream is busy; try again", reason=Reason.UPSTREAM_BUSY) from None
            try:
                yield
            finally:
                slots.release()
        finally:
            self._held[key] -= 1
            if self._held[key] <= 0:
                del self._held[key]
