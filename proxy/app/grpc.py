"""The gRPC listener for Envoy's ext_authz (optional extra `idgate[envoy]`), started and stopped with the
HTTP listeners: proxy.transport.h2.server on idgate's event loop, calling the Check handler."""

from __future__ import annotations

from proxy.edges.ext_authz_grpc import METHOD, SERVICE, CheckHandler
from proxy.transport.h2.server import H2GrpcServer
from proxy.services import Services
from proxy.edges._in_flight import InFlight

STOP_GRACE_SECONDS = 2.0


class GrpcListener:
    def __init__(self, services: Services, in_flight: InFlight) -> None:
        grpc_config = services.config.ext_authz.grpc
        assert grpc_config is not None, "built only when ext_authz.grpc is configured"
        self._config = grpc_config
        self._handler = CheckHandler(services, in_flight)
        metrics = services.metrics
        # Only trusted proxies may speak HTTP/2 to us at all; the Check handler refuses others again.
        self._server = H2GrpcServer(self._handler.check, f"/{SERVICE}/{METHOD}",
                                    max_message_bytes=grpc_config.max_message_bytes,
                                    admit=services.trusted.__contains__,
                                    on_refuse=lambda reason: metrics.child(metrics.grpc_refused, reason).inc(),
                                    metadata=services.tracing.carrier_names)
        self.port = 0

    async def start(self, *, reuse_port: bool = False) -> None:
        self.port = await self._server.start(self._config.host, self._config.port, reuse_port=reuse_port)

    async def stop(self) -> None:
        await self._server.stop(STOP_GRACE_SECONDS)
