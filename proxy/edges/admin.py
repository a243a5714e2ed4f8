"""Admin surface on its own listener: liveness, readiness, Prometheus metrics and the JWKS that
verifies X-Idgate-Assertion."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.core.headers import request_id
from proxy.services import SERVICES

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready only with a loaded policy, keys for every issuer, a writable audit log, audit shipping
    not halted and within audit.shipping.max_lag_seconds (when configured), and, under `--workers N`,
    every worker serving: a load balancer probing the shared admin port reaches any one of them."""
    services = request.app[SERVICES]
    checks = {
        "policy": services.policy.current is not None,
        "issuers": services.verifier.ready(),
        "audit": services.audit.healthy,
    }
    shipping = services.shipper.status() if services.shipper is not None else None
    if shipping is not None:
        checks["audit_shipping"] = bool(shipping["ok"])
    workers = services.workers.readiness() if services.workers is not None else None
    if workers is not None:
        checks["workers"] = not workers["missing"]
    body = {"ready": all(checks.values()), "checks": checks, "issuers": services.verifier.status()}
    if shipping is not None:
        body["audit_shipping"] = shipping["sinks"]
    if workers is not None:
        body["workers"] = workers
    if services.policy.last_error:
        body["policy_reload_error"] = services.policy.last_error
    return web.json_response(body, status=200 if body["ready"] else 503)


async def metrics(request: web.Request) -> web.Response:
    payload = generate_latest(request.app[SERVICES].metrics.registry)
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def jwks(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICES].signer.jwks(), headers={"Cache-Control": "max-age=300"})


_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The admin listener answers like the main one: JSON errors, idgate's Server header."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        rid = request_id(None, trusted_peer=False)
        response = web.json_response({"code": _ERROR_CODES.get(exc.status, "bad_request"),
                                      "message": exc.reason, "request_id": rid},
                                     status=exc.status, headers={"X-Request-Id": rid})
    if not response.prepared:
        response.headers["Server"] = "idgate"
    return response


def add_routes(app: web.Application, **route_args: Any) -> None:
    for path, handler in (("/healthz", healthz), ("/readyz", readyz), ("/metrics", metrics),
                          ("/.well-known/jwks.json", jwks)):
        app.router.add_get(path, handler, **route_args)
