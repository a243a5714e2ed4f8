"""Every listener of one process (main, admin, and gRPC when configured), started and stopped together."""

from __future__ import annotations

import errno
import ssl
from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from proxy.app.http import build_admin_app, build_main_app, runner_args
from proxy.app.protocol import ConnectionBounds, GuardedAppRunner
from proxy.config import Config
from proxy.core.errors import StartupError
from proxy.edges._in_flight import InFlight
from proxy.services import Services


def tls_context(config: Config) -> ssl.SSLContext | None:
    tls = config.listen.tls
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


class Listeners:
    """Both listeners of one process, started and stopped together; ports are known after start."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self.in_flight = InFlight()
        limits = services.config.limits
        bounds = ConnectionBounds.of(limits)
        trusted = services.trusted.__contains__
        metrics = services.metrics
        self._main = GuardedAppRunner(build_main_app(services, self.in_flight), bounds, trusted,
                                      lambda reason: metrics.child(metrics.http_refused, "main", reason).inc(),
                                      **runner_args(limits))
        self._admin = GuardedAppRunner(build_admin_app(services), bounds, trusted,
                                       lambda reason: metrics.child(metrics.http_refused, "admin", reason).inc(),
                                       **runner_args(limits))
        self._grpc: Any = None    # proxy.app.grpc.GrpcListener: imported only when configured (optional extra)
        self.main_port = 0
        self.admin_port = 0
        self.grpc_port = 0

    async def start(self, *, reuse_port: bool = False) -> None:
        config = self._services.config
        await self._main.setup()
        await self._admin.setup()
        main = web.TCPSite(self._main, config.listen.host, config.listen.port,
                           ssl_context=tls_context(config), reuse_port=reuse_port or None, backlog=1024)
        admin_site = web.TCPSite(self._admin, config.admin.host, config.admin.port, reuse_port=reuse_port or None)
        await _bound("listen", config.listen.host, config.listen.port, main.start())
        await _bound("admin", config.admin.host, config.admin.port, admin_site.start())
        self.main_port = _bound_port(self._main)
        self.admin_port = _bound_port(self._admin)
        if config.ext_authz.grpc is not None:
            from proxy.app.grpc import GrpcListener
            self._grpc = GrpcListener(self._services, self.in_flight)
            grpc = config.ext_authz.grpc
            await _bound("ext_authz.grpc", grpc.host, grpc.port, self._grpc.start(reuse_port=reuse_port))
            self.grpc_port = self._grpc.port

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop()
        await self._main.cleanup()
        await self._admin.cleanup()


_BIND_FAILURES = {
    errno.EADDRINUSE: "the address is already in use (another idgate, or another server, listens there)",
    errno.EACCES: "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)",
    errno.EADDRNOTAVAIL: "no interface of this machine has that address",
}


async def _bound(key: str, host: str, port: int, binding: Awaitable[None]) -> None:
    """Bind one listener; the everyday failures become one line naming the config key and the fix."""
    try:
        await binding
    except OSError as exc:
        cause = _BIND_FAILURES.get(exc.errno or 0)
        if cause is None:
            raise
        raise StartupError(f"cannot listen on {host}:{port} ({key}): {cause}; stop the other process or "
                           f"choose another {key}.host/{key}.port") from exc


def _bound_port(runner: web.AppRunner) -> int:
    address = runner.addresses[0]
    return int(address[1])
