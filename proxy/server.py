"""Builds the aiohttp applications (main listener: forward-auth + reverse proxy; admin listener)
and the one middleware that turns idgate errors into responses, audits and counts them."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proxy.config import Config, LimitsConfig
from proxy.edges import admin, credentials, ext_authz_http, forward_auth, reverse_proxy
from proxy.edges._http import REQUEST_ID, RESPONSE_STARTED, SURFACE, client_addr, rejected_target
from proxy.errors import BadRequest, DependencyError, HeadersTooLarge, IdgateError, NotFound
from proxy.headers import request_id
from proxy.model import Surface
from proxy.routes import RouteTable
from proxy.runtime import SERVICES, Services

log = logging.getLogger("idgate.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp's own parser limits sit above idgate's, so an oversized head normally reaches the
# middleware and gets an audited 431; only grossly oversized heads are cut off by the parser.
_PARSER_HEADROOM = 2


def error_parts(err: IdgateError, rid: str) -> tuple[dict[str, str], dict[str, str]]:
    """Headers and JSON body of a denial: the one mapping, also used by surfaces that answer in
    another wire format (Envoy's gRPC DeniedHttpResponse)."""
    headers = {"X-Request-Id": rid, "Cache-Control": "no-store"}
    if err.status == 401:
        error = "invalid_request" if err.reason == "missing_token" else "invalid_token"
        headers["WWW-Authenticate"] = f'Bearer realm="idgate", error="{error}"'
    return headers, {"code": err.code, "message": err.message, "request_id": rid}


def error_response(err: IdgateError, rid: str) -> web.Response:
    headers, body = error_parts(err, rid)
    return web.json_response(body, status=err.status, headers=headers)


def _from_aiohttp(exc: web.HTTPException) -> IdgateError:
    if exc.status == 404:
        return NotFound("no route for this request target", reason="no_route")
    return BadRequest("this request target is not accepted", reason="bad_target")


def _check_head_limits(request: web.Request, limits: LimitsConfig) -> None:
    if len(request.raw_headers) > limits.max_headers:
        raise HeadersTooLarge("too many request headers", reason="too_many_headers")
    for name, value in request.raw_headers:
        if len(name) + len(value) > limits.max_header_bytes:
            raise HeadersTooLarge("a request header is too large", reason="header_too_large")


class InFlight:
    """Counts requests inside the handlers, so a caller can wait until every one has finished
    (and so has queued its outcome record)."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()


# The surface a route serves, known before its handler runs: a head refused by the limits is audited
# under the surface it was sent to.
_ROUTE_SURFACES: dict[object, Surface] = {forward_auth.handle: Surface.FORWARD_AUTH, ext_authz_http.handle: Surface.EXT_AUTHZ_HTTP}


def guard_middleware(services: Services, in_flight: InFlight) -> Any:
    limits = services.config.limits

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = request_id(request.headers.get("X-Request-Id"), trusted_peer=client_addr(request) in services.trusted)
        request[REQUEST_ID] = rid
        request[SURFACE] = _ROUTE_SURFACES.get(request.match_info.handler, Surface.PROXY)
        in_flight.enter()
        try:
            _check_head_limits(request, limits)
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                # aiohttp's router refusing a target (OPTIONS *, CONNECT host:port): answered and
                # audited like every other refusal, not with aiohttp's page.
                raise _from_aiohttp(exc) from exc
        except IdgateError as err:
            if request.get(RESPONSE_STARTED):
                raise  # the head is on the wire: aiohttp drops the connection so a partial body is visible
            if not err.audited:
                try:
                    await services.pipeline.record_rejection(rejected_target(request), err)
                except DependencyError as audit_err:
                    err = audit_err  # fail closed: no audit, no answer but 503
            response = error_response(err, rid)
        finally:
            in_flight.leave()
        metrics = services.metrics
        metrics.child(metrics.requests, request[SURFACE].value, "allow" if response.status < 400 else "deny",
                      str(response.status)).inc()
        if not response.prepared:
            response.headers["X-Request-Id"] = rid
            response.headers.setdefault("Server", "idgate")  # not aiohttp's version string
        return response

    return guard


def build_main_app(services: Services, in_flight: InFlight) -> web.Application:
    app = web.Application(middlewares=[guard_middleware(services, in_flight)], client_max_size=1024)
    app[SERVICES] = services
    app[reverse_proxy.ROUTES] = RouteTable(services.config.routes)
    if services.config.forward_auth.enabled:
        app.router.add_route("*", services.config.forward_auth.path, forward_auth.handle)
    if services.config.credentials.enabled:
        app.router.add_route("*", services.config.credentials.path, credentials.handle)
    if services.config.ext_authz.http is not None:
        # Everything under the prefix, also a target without '/', so none of it falls through to the proxy.
        app.router.add_route("*", services.config.ext_authz.http.path_prefix + "{tail:.*}", ext_authz_http.handle)
    app.router.add_route("*", "/{tail:.*}", reverse_proxy.handle)
    return app


def build_admin_app(services: Services) -> web.Application:
    app = web.Application()
    app[SERVICES] = services
    admin.add_routes(app)
    return app


def runner_args(limits: LimitsConfig) -> dict[str, Any]:
    """aiohttp server arguments.  aiohttp has no separate header-read timeout: its idle timer also
    closes a connection whose request head has not completed, so it bounds slow-header clients."""
    return {
        "max_line_size": limits.max_line_bytes,
        "max_field_size": limits.max_header_bytes * _PARSER_HEADROOM,
        "max_headers": limits.max_headers * _PARSER_HEADROOM,
        "keepalive_timeout": min(limits.header_timeout, limits.keepalive_timeout),
        "access_log": None,
    }


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
        self._main = web.AppRunner(build_main_app(services, self.in_flight), **runner_args(services.config.limits))
        self._admin = web.AppRunner(build_admin_app(services), access_log=None)
        self._grpc: Any = None    # proxy.grpc_listener.GrpcListener: imported only when configured (optional extra)
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
        await main.start()
        await admin_site.start()
        self.main_port = _bound_port(self._main)
        self.admin_port = _bound_port(self._admin)
        if config.ext_authz.grpc is not None:
            from proxy.grpc_listener import GrpcListener
            self._grpc = GrpcListener(self._services, self.in_flight)
            await self._grpc.start(reuse_port=reuse_port)
            self.grpc_port = self._grpc.port

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop()
        await self._main.cleanup()
        await self._admin.cleanup()


def _bound_port(runner: web.AppRunner) -> int:
    address = runner.addresses[0]
    return int(address[1])
