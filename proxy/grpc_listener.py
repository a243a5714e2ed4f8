"""The gRPC listener for Envoy's ext_authz (optional extra `idgate[envoy]`): one grpc.aio server on the
idgate event loop, started and stopped with the HTTP listeners."""

from __future__ import annotations

import grpc

from proxy.edges.ext_authz_grpc import METHOD, SERVICE, CheckHandler
from proxy.runtime import Services
from proxy.server import InFlight

STOP_GRACE_SECONDS = 2.0


class GrpcListener:
    def __init__(self, services: Services, in_flight: InFlight) -> None:
        grpc_config = services.config.ext_authz.grpc
        assert grpc_config is not None, "built only when ext_authz.grpc is configured"
        self._config = grpc_config
        self._handler = CheckHandler(services, in_flight)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, *, reuse_port: bool = False) -> None:
        options = [
            # A larger CheckRequest is refused by grpc before any of it is parsed.
            ("grpc.max_receive_message_length", self._config.max_message_bytes),
            # grpc turns SO_REUSEPORT on by default: a second process would share the port silently.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
        server = grpc.aio.server(options=options)
        handler = self._handler

        async def check(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return await handler.check(request, context.peer())

        # No (de)serializers: the handler sees raw bytes, so a malformed message is answered, not raised.
        rpc = grpc.unary_unary_rpc_method_handler(check)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: rpc}),))
        host = self._config.host
        address = f"[{host}]:{self._config.port}" if ":" in host else f"{host}:{self._config.port}"
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:   # grpc's "Failed to bind": the same failure aiohttp reports as OSError
            raise OSError(f"cannot listen on {address} for gRPC ext_authz") from exc
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(STOP_GRACE_SECONDS)
            self._server = None
