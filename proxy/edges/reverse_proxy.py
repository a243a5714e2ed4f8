"""Reverse-proxy surface: authorize the normalized request, then stream it to the matched upstream
and stream the answer back, with bounded memory and without leaking upstream internals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from yarl import URL

from proxy.assertion import audience
from proxy.config import RouteConfig
from proxy.core.errors import AuthenticationError, BadRequest, DependencyError, IdgateError, RequestTimeout, RequestTooLarge, UpstreamError, UpstreamTimeout
from proxy.core.headers import clean_request_headers, clean_response_headers, forwarded_for, set_cookie_name
from proxy.core.model import AccessRequest, Decision, Surface
from proxy.core.reasons import Reason
from proxy.edges._admission import Gate, admit
from proxy.edges._login import is_navigation, login_redirect
from proxy.edges._http import RESPONSE_STARTED, continue_if_expected, identity_headers, received
from proxy.edges._routes import ROUTES, RouteSlots
from proxy.edges._websocket import relay
from proxy.services import SERVICES, Services
from proxy.tracing import SpanName
from proxy.transport import http1

SURFACE = Surface.PROXY
GATE = Gate(SURFACE, sessions=True)

CHUNK = 64 * 1024
SLOTS: web.AppKey[RouteSlots] = web.AppKey("idgate_route_slots", RouteSlots)


class _BodyCounter:
    """Streams the client body upstream, counting bytes, stopping at the route's limit, and giving
    up on a client that goes quiet mid-body (it would hold an upstream connection hostage)."""

    def __init__(self, content: aiohttp.StreamReader, limit: int, idle_timeout: float) -> None:
        self._content = content
        self._limit = limit
        self._idle_timeout = idle_timeout
        self.count = 0
        self.failure: IdgateError | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(self._idle_timeout):
                    chunk = await self._content.read(CHUNK)
            except TimeoutError:
                self.failure = RequestTimeout("the request body stopped arriving", reason=Reason.BODY_TIMEOUT)
                raise self.failure from None
            except IdgateError as err:   # the connection's parser refused the body's framing
                self.failure = err
                raise
            if not chunk:
                return
            self.count += len(chunk)
            if self.count > self._limit:
                self.failure = RequestTooLarge("request body exceeds the route limit", reason=Reason.BODY_TOO_LARGE)
                raise self.failure
            yield chunk


def _check_declared_length(request: web.Request, route: RouteConfig) -> None:
    if request.content_length is not None and request.content_length > route.max_body_bytes:
        raise RequestTooLarge("request body exceeds the route limit", reason=Reason.BODY_TOO_LARGE)


def _wants_websocket(request: web.Request, route: RouteConfig) -> bool:
    """Decide before authorizing, so the method and handshake that are authorized are the ones relayed."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return False
    if not route.websocket:
        raise BadRequest("this route does not accept WebSocket upgrades", reason=Reason.WEBSOCKET_NOT_ALLOWED)
    if request.method != "GET" or not web.WebSocketResponse().can_prepare(request).ok:
        raise BadRequest("malformed WebSocket handshake", reason=Reason.BAD_WEBSOCKET_HANDSHAKE)
    return True


def _upstream_headers(services: Services, request: web.Request, route: RouteConfig, access: AccessRequest,
                      decision: Decision) -> list[tuple[str, str]]:
    trusted = access.client_addr in services.trusted
    headers = [(name, value) for name, value in
               clean_request_headers(list(request.headers.items()), trusted_peer=trusted,
                                     trusted_context=access.client_addr in services.tracing.peers,
                                     keep_authorization=route.forward_token,
                                     private_cookie=services.private_cookie)
               if name.lower() != "content-length"]
    if request.content_length is not None:   # the length as parsed, never the client's spelling (002, +2)
        headers.append(("Content-Length", str(request.content_length)))
    headers += [
        ("Host", access.host),          # the host decided on, never the client's spelling of it
        ("X-Forwarded-For", forwarded_for(request.headers.getall("X-Forwarded-For", []), access.client_addr,
                                          trusted_peer=trusted)),
        ("X-Forwarded-Proto", request.scheme),
        ("X-Forwarded-Host", access.host),
        ("X-Request-Id", access.request_id),
    ]
    headers += identity_headers(services, decision, audience(SURFACE, route.name))
    return headers


def _response_headers(upstream: list[tuple[str, str]], route: RouteConfig, request_id: str,
                      private_cookie: Callable[[str], bool] | None) -> list[tuple[str, str]]:
    """The upstream's headers minus hop-by-hop ones, with redirects to the upstream's own address made
    relative and the upstream's Server header replaced: internal addresses and software versions are
    nobody's business.  An upstream never sets (or clears) idgate's own cookies: it would fix the
    browser's session to one of its choosing, or end it."""
    base = route.upstream.rstrip("/")
    headers = []
    for name, value in clean_response_headers(upstream):
        lowered = name.lower()
        if lowered in ("server", "x-request-id"):
            continue
        if lowered == "set-cookie" and private_cookie is not None and private_cookie(set_cookie_name(value).lower()):
            continue
        if lowered == "location" and (value == base or value.startswith(base + "/")):
            value = value[len(base):] or "/"
        headers.append((name, value))
    headers += [("Server", "idgate"), ("X-Request-Id", request_id)]
    return headers


async def handle(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    admitted = await admit(services, GATE, received(request))
    access = admitted.access
    route = request.app[ROUTES].match(access.host, access.path)
    _check_declared_length(request, route)
    websocket = _wants_websocket(request, route)
    try:
        decision = await services.pipeline.authorize(access, admitted.token, admitted.session)
    except AuthenticationError:
        # A person's page load on a login route goes to the issuer's login (its denial is already on the
        # audit log); an API call, or a bad bearer token, gets its 401.
        if route.login and admitted.token is None and services.sessions is not None and is_navigation(request):
            return await login_redirect(services.sessions, request, route, request.raw_path, stale_session=True)
        raise
    # The path idgate decided on is the path it sends: normalized, never the client's spelling; the
    # query as the client sent it.  Neither is re-encoded or resolved on the way.
    target = access.path + (f"?{admitted.query}" if admitted.query else "")
    headers = _upstream_headers(services, request, route, access, decision)
    try:
        assert decision.identity is not None, "an allow decision always carries its identity"
        async with request.app[SLOTS].hold(route, (decision.identity.issuer, decision.identity.subject)):
            if websocket:
                url = URL(route.upstream.rstrip("/") + target, encoded=True)
                with services.tracing.client(SpanName.UPSTREAM) as span:
                    span.set("idgate.route", route.name)
                    services.tracing.inject(headers)
                    return await relay(request, services, access, decision, url, headers, route)
            if request.body_exists:
                await continue_if_expected(request)
            # Unless the request is sampled, straight to the exchange: no span to wrap it in, so no coroutine
            # for one (a request not sampled still tells the upstream its trace).
            tracing = services.tracing
            if tracing.sampled():
                return await _forward(request, services, access, decision, route, target, headers)
            if tracing.enabled:
                tracing.inject(headers)
            return await _exchange(request, services, access, decision, route, target, headers)
    except DependencyError as busy:
        if busy.reason in (Reason.UPSTREAM_BUSY, Reason.IDENTITY_BUSY):
            services.metrics.child(services.metrics.upstream_busy, route.name).inc()
            services.pipeline.record_failure(access, decision, busy)
        raise


class _WithFirstChunk(web.StreamResponse):
    """Holds the head back until the first body bytes (or the end), as aiohttp's web.Response does: one
    write instead of two for an answer that arrived whole.  (aiohttp's own flag; if it went away, the
    head would just go out on its own.)"""

    _send_headers_immediately = False


async def _forward(request: web.Request, services: Services, access: AccessRequest, decision: Decision,
                   route: RouteConfig, target: str, headers: list[tuple[str, str]]) -> web.StreamResponse:
    # The upstream's own spans are children of this one: it covers the exchange until the last byte.
    with services.tracing.client(SpanName.UPSTREAM) as span:
        span.set("idgate.route", route.name)
        services.tracing.inject(headers)
        response = await _exchange(request, services, access, decision, route, target, headers)
        span.set("http.response.status_code", response.status)
        return response


async def _exchange(request: web.Request, services: Services, access: AccessRequest, decision: Decision,
                    route: RouteConfig, target: str, headers: list[tuple[str, str]]) -> web.StreamResponse:
    started = time.perf_counter()
    body = _BodyCounter(request.content, route.max_body_bytes, route.read_timeout)
    status, bytes_out = 502, 0
    failure: IdgateError | None = None
    error: Reason | None = None
    try:
        async with services.upstream.request(
            services.origins[route.name], request.method, target, headers,
            body.chunks() if request.body_exists else None,
            connect_timeout=route.connect_timeout, read_timeout=route.read_timeout,
        ) as upstream:
            metrics = services.metrics
            metrics.child(metrics.upstream_seconds, route.name).observe(time.perf_counter() - started)
            # A body that is already here goes out with the head, in one write; otherwise the head goes
            # at once (a client may act on it before the first byte of a slow body).
            kind = _WithFirstChunk if upstream.ready() else web.StreamResponse
            response = kind(status=upstream.status, reason=upstream.reason or None,
                            headers=_response_headers(upstream.headers, route, access.request_id,
                                                     services.private_cookie))
            status = upstream.status
            request[RESPONSE_STARTED] = True
            await response.prepare(request)
            read = upstream.read
            while chunk := await read():
                bytes_out += len(chunk)
                if upstream.at_end():
                    await response.write_eof(chunk)     # the last bytes and the end of the body, in one write
                    break
                await response.write(chunk)
            else:
                await response.write_eof()
            return response
    except ConnectionResetError:
        # The client went away (mid-response, or mid-body: its body stream raises it): not the
        # upstream's fault, and nothing to answer.
        error = Reason.CLIENT_DISCONNECTED
        raise
    except (http1.ClientError, IdgateError) as exc:
        # The body's own verdict (too large, too slow, malformed) wins over what it did to the exchange.
        failure = body.failure or _upstream_failure(exc)
        if failure is exc:
            raise
        raise failure from exc
    finally:
        duration = time.perf_counter() - started
        if failure is not None:   # this outcome is the request's record of the failure
            services.pipeline.record_failure(access, decision, failure, bytes_in=body.count, bytes_out=bytes_out,
                                             duration=duration)
        else:
            services.pipeline.record_outcome(access, decision, status=status, bytes_in=body.count,
                                             bytes_out=bytes_out, duration=duration, error=error)


def _upstream_failure(exc: BaseException) -> IdgateError:
    """The transport's exceptions as idgate's (messages safe to show: no address, no upstream bytes)."""
    if isinstance(exc, IdgateError):
        return exc
    if isinstance(exc, http1.Timeout):
        return UpstreamTimeout("the upstream did not answer in time", reason=Reason.UPSTREAM_TIMEOUT)
    if isinstance(exc, http1.BadResponse):
        return UpstreamError("the upstream's answer was malformed", reason=Reason.UPSTREAM_BAD_RESPONSE)
    if isinstance(exc, http1.BodyMismatch):
        return BadRequest("the request body does not match its length", reason=Reason.MALFORMED_BODY)
    if isinstance(exc, http1.InvalidRequest):
        return BadRequest("the request cannot be forwarded", reason=Reason.BAD_HEADER)
    return UpstreamError("the upstream could not be reached", reason=Reason.UPSTREAM_FAILED)
