"""Pick the upstream route for a host and normalized path: host-specific routes before catch-all
ones, then the longest path prefix on a segment boundary.  Pure."""

from __future__ import annotations

from collections.abc import Sequence

from proxy.config import RouteConfig
from proxy.core.errors import NotFound
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
