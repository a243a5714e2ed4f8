"""Routes: the upstream route for a host and normalized path (host-specific routes before catch-all
ones, then the longest path prefix on a segment boundary), and the connections each route may hold."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

from aiohttp import web

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

    def hold(self, route: RouteConfig, caller: object) -> _Slot:
        """`async with slots.hold(route, caller):` one of the route's connections, for `caller`."""
        return _Slot(self, route, caller)


class _Slot:
    """One held connection (a class, not an asynccontextmanager: this is on every proxied request)."""

    __slots__ = ("_owner", "_route", "_key", "_semaphore")

    def __init__(self, owner: RouteSlots, route: RouteConfig, caller: object) -> None:
        self._owner, self._route, self._key = owner, route, (route.name, caller)
        self._semaphore = owner._slots[route.name]

    async def __aenter__(self) -> None:
        held, key, route = self._owner._held, self._key, self._route
        if held[key] >= route.max_connections_per_identity:
            raise DependencyError("this caller holds its share of the upstream's connections; try again",
                                  reason=Reason.IDENTITY_BUSY)
        held[key] += 1
        try:
            if self._semaphore.locked():      # only a wait needs its deadline (and its timer)
                async with asyncio.timeout(route.pool_timeout):
                    await self._semaphore.acquire()
            else:
                await self._semaphore.acquire()
        except BaseException as exc:
            self._release_caller()
            if isinstance(exc, TimeoutError):
                raise DependencyError("the upstream is busy; try again", reason=Reason.UPSTREAM_BUSY) from None
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._semaphore.release()
        self._release_caller()

    def _release_caller(self) -> None:
        held, key = self._owner._held, self._key
        held[key] -= 1
        if held[key] <= 0:
            del held[key]


ROUTES: web.AppKey[RouteTable] = web.AppKey("idgate_routes", RouteTable)   # the main app's route table
