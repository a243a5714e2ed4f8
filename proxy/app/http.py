"""The aiohttp applications: the main listener's routes (forward auth, credentials, ext_authz HTTP,
and the reverse proxy for everything else) behind the error guard, and the admin listener's."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.config import LimitsConfig
from proxy.core.model import Surface
from proxy.edges import admin, credentials, dynamodb, ext_authz_http, forward_auth, login, reverse_proxy
from proxy.edges._errors import guard_middleware
from proxy.edges._in_flight import InFlight
from proxy.app.protocol import deferred_expect, idgate_server_header
from proxy.edges._routes import ROUTES, RouteSlots, RouteTable
from proxy.services import SERVICES, Services

# aiohttp's own parser limits sit above idgate's, so an oversized head normally reaches the
# middleware and gets an audited 431; only grossly oversized heads are cut off by the parser.
_PARSER_HEADROOM = 2

# The surface each route serves, known before its handler runs (the reverse proxy is the rest).
_ROUTE_SURFACES: dict[object, Surface] = {
    edge.handle: edge.SURFACE for edge in (forward_auth, ext_authz_http, credentials, dynamodb, login, reverse_proxy)
}


def build_main_app(services: Services, in_flight: InFlight) -> web.Application:
    app = web.Application(middlewares=[guard_middleware(services, in_flight, _ROUTE_SURFACES)], client_max_size=1024)
    app[SERVICES] = services
    app[ROUTES] = RouteTable(services.config.routes)
    app[reverse_proxy.SLOTS] = RouteSlots(services.config.routes)
    if services.config.forward_auth.enabled:
        app.router.add_route("*", services.config.forward_auth.path, forward_auth.handle, expect_handler=deferred_expect)
    if services.config.credentials.enabled:
        app.router.add_route("*", services.config.credentials.path, credentials.handle, expect_handler=deferred_expect)
    if services.config.aws.gateway.enabled:
        app.router.add_route("*", services.config.aws.gateway.path, dynamodb.handle, expect_handler=deferred_expect)
    if (login_config := services.config.login) is not None:
        for path in (login_config.login_path, login_config.callback_path, login_config.logout_path,
                     login_config.backchannel_logout_path):
            app.router.add_route("*", path, login.handle, expect_handler=deferred_expect)
    if services.config.ext_authz.http is not None:
        # Everything under the prefix, also a target without '/', so none of it falls through to the proxy.
        app.router.add_route("*", services.config.ext_authz.http.path_prefix + "{tail:.*}", ext_authz_http.handle,
                             expect_handler=deferred_expect)
    app.router.add_route("*", "/{tail:.*}", reverse_proxy.handle, expect_handler=deferred_expect)
    app.on_response_prepare.append(idgate_server_header)
    return app


def build_admin_app(services: Services) -> web.Application:
    app = web.Application(middlewares=[admin.guard])
    app[SERVICES] = services
    admin.add_routes(app, expect_handler=deferred_expect)
    app.on_response_prepare.append(idgate_server_header)
    return app


def runner_args(limits: LimitsConfig) -> dict[str, Any]:
    """aiohttp server arguments: its parser's own limits (above idgate's), and its idle timer for
    keep-alive connections between requests."""
    return {
        "max_line_size": limits.max_line_bytes,
        "max_field_size": limits.max_header_bytes * _PARSER_HEADROOM,
        "max_headers": limits.max_headers * _PARSER_HEADROOM,
        "keepalive_timeout": limits.keepalive_timeout,   # heads have their own deadline (proxy.app.protocol)
        "access_log": None,
    }
