"""Exceptions become answers here, for every aiohttp surface: the status, the JSON body, the headers,
the audit record of a refusal and the request metric.  Envoy's gRPC surface reuses error_parts."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from proxy.core.errors import AccessDenied, AuthenticationError, BadRequest, IdgateError, NotFound
from proxy.core.headers import request_id
from proxy.core.model import Surface
from proxy.core.reasons import Reason
from proxy.edges._http import REQUEST_ID, REQUEST_SURFACE, RESPONSE_STARTED, client_addr, rejected_target
from proxy.edges._in_flight import InFlight
from proxy.services import Services

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# idgate retries an unreachable issuer's keys on the next request at most once a second (proxy.oidc.issuer).
ISSUER_RETRY_AFTER = "1"


def error_parts(err: IdgateError, rid: str) -> tuple[dict[str, str], dict[str, str]]:
    """Headers and JSON body of a denial: the one mapping, also used by surfaces that answer in
    another wire format (Envoy's gRPC DeniedHttpResponse)."""
    headers = {"X-Request-Id": rid, "Cache-Control": "no-store"}
    if err.status == 401:
        error = "invalid_request" if err.reason is Reason.MISSING_TOKEN else "invalid_token"
        headers["WWW-Authenticate"] = f'Bearer realm="idgate", error="{error}"'
    elif err.reason is Reason.ISSUER_UNAVAILABLE:
        headers["Retry-After"] = ISSUER_RETRY_AFTER
    return headers, {"code": err.code, "message": err.message, "request_id": rid}


def error_response(err: IdgateError, rid: str, surface: Surface | None = None) -> web.Response:
    if surface is Surface.DYNAMODB:
        return dynamodb_error_response(err, rid)
    headers, body = error_parts(err, rid)
    return web.json_response(body, status=err.status, headers=headers)


# DynamoDB's error answers, as botocore reads them: `__type` (the code after '#') and `message`.  A client's
# fault is a 400, as DynamoDB answers it (boto3 retries a 5xx, so a denial must never look like one); what
# idgate or AWS could not do (audit, STS, DynamoDB itself) keeps its 5xx, which boto3 retries.
_CORAL = "com.amazon.coral.service#"
_BY_REASON = {
    Reason.MISSING_SIGNATURE: _CORAL + "MissingAuthenticationTokenException",
    Reason.INVALID_GATEWAY_TOKEN: _CORAL + "UnrecognizedClientException",
    Reason.UNKNOWN_GATEWAY_KEY: _CORAL + "UnrecognizedClientException",
    Reason.GATEWAY_TOKEN_EXPIRED: _CORAL + "ExpiredTokenException",
    Reason.UNKNOWN_OPERATION: _CORAL + "UnknownOperationException",
    Reason.MALFORMED_JSON: _CORAL + "SerializationException",
}
_BY_CLASS = ((AuthenticationError, _CORAL + "InvalidSignatureException"),
             (AccessDenied, _CORAL + "AccessDeniedException"),
             (BadRequest, "com.amazon.coral.validate#ValidationException"))
DYNAMODB_CONTENT_TYPE = "application/x-amz-json-1.0"


def dynamodb_error_response(err: IdgateError, rid: str) -> web.Response:
    error_type = _BY_REASON.get(err.reason) or next(
        (name for cls, name in _BY_CLASS if isinstance(err, cls)), "com.amazonaws.dynamodb.v20120810#InternalServerError")
    status = 400 if isinstance(err, AuthenticationError | AccessDenied | BadRequest) else max(err.status, 500)
    body = json.dumps({"__type": error_type, "message": err.message, "idgate_reason": err.reason.value})
    return web.Response(status=status, text=body, content_type=DYNAMODB_CONTENT_TYPE,
                        headers={"x-amzn-RequestId": rid, "X-Request-Id": rid, "Cache-Control": "no-store"})


def _from_aiohttp(exc: web.HTTPException) -> IdgateError:
    if exc.status == 404:
        return NotFound("no route for this request target", reason=Reason.NO_ROUTE)
    return BadRequest("this request target is not accepted", reason=Reason.BAD_TARGET)


def guard_middleware(services: Services, in_flight: InFlight, surfaces: Mapping[object, Surface]) -> Any:
    """The one place an aiohttp surface's IdgateError becomes its answer: audited (unless the pipeline
    already did), failing closed to 503 when the audit cannot be written, and counted.  `surfaces` maps
    a route's handler to the surface it serves, for the metric and for a refusal raised outside admission."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = client_addr(request)
        rid = request_id(request.headers.get("X-Request-Id"), trusted_peer=peer in services.trusted)
        request[REQUEST_ID] = rid
        surface = request[REQUEST_SURFACE] = surfaces.get(request.match_info.handler, Surface.PROXY)
        in_flight.enter()
        # The request's server span: every span, decision and audit record of this request hangs below it.
        with services.tracing.server(surface, request.method, peer, request.headers) as span:
            try:
                try:
                    response = await handler(request)
                except web.HTTPException as exc:
                    # aiohttp's router refusing a target (OPTIONS *, CONNECT host:port): answered and
                    # audited like every other refusal, not with aiohttp's page.
                    raise _from_aiohttp(exc) from exc
            except IdgateError as err:
                if request.get(RESPONSE_STARTED):
                    raise  # the head is on the wire: aiohttp drops the connection so a partial body is visible
                response = error_response(await services.pipeline.refuse(rejected_target(request), err), rid,
                                          surface)
            finally:
                in_flight.leave()
            span.answered(response.status)
        metrics = services.metrics
        metrics.child(metrics.requests, surface.value, "allow" if response.status < 400 else "deny",
                      str(response.status)).inc()
        if not response.prepared:
            response.headers["X-Request-Id"] = rid
            response.headers.setdefault("Server", "idgate")  # not aiohttp's version string
        return response

    return guard
