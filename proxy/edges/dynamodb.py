"""The DynamoDB gateway surface: `POST <aws.gateway.path>` in DynamoDB's JSON protocol, SigV4-signed by the
client with gateway credentials.  Admitted, read whole (DynamoDB's size limit), authorized per touch with
its decision record durable, re-signed and forwarded; DynamoDB's answer goes back byte for byte, and its
outcome record follows.  Denials answer in DynamoDB's error form (proxy.edges._errors)."""

from __future__ import annotations

import asyncio
import functools
import time

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from proxy.aws.dynamodb.calls import MAX_BODY_BYTES, MAX_ITEM_CALL_BYTES, PARAMETERS, TARGET_PREFIX
from proxy.aws.dynamodb.schema import error_type
from proxy.aws.gateway import Answer, DynamoDbGateway, table_namer
from proxy.aws.gateway_records import outcome_view
from proxy.aws.sigv4 import SignedRequest
from proxy.config import GatewayConfig
from proxy.core.errors import BadRequest, DependencyError, IdgateError, RequestTimeout, RequestTooLarge
from proxy.core.model import AccessRequest, Surface
from proxy.core.reasons import Reason
from proxy.edges._admission import Gate, TokenForm, admit
from proxy.edges._http import continue_if_expected, received
from proxy.pipeline import GatewayCall
from proxy.services import SERVICES, Services
from proxy.tracing import SpanName

SURFACE = Surface.DYNAMODB
GATE = Gate(SURFACE, token_form=TokenForm.SIGV4, methods=frozenset({"POST"}))
_THROTTLED = frozenset({"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"})
_SCHEMA_MISMATCH = "key element does not match the schema"


async def handle(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    gateway = services.gateway
    admitted = await admit(services, GATE, received(request))
    if gateway is None:
        raise DependencyError("the DynamoDB gateway is not running", reason=Reason.BROKER_UNAVAILABLE)
    if any(value.strip().lower() != "identity" for value in request.headers.getall("Content-Encoding", ())):
        # aiohttp would inflate the body before idgate reads it: the signature, the decision and what is
        # forwarded must all be about the bytes the client sent.  SDKs do not compress DynamoDB calls.
        raise BadRequest("compressed DynamoDB calls are not accepted", reason=Reason.INVALID_DYNAMODB_REQUEST)
    head = SignedRequest(request.method, admitted.raw_path, admitted.query, list(request.headers.items()), b"")
    operation = _operation_label(head)
    metrics = services.metrics

    async def read_body() -> bytes:
        # Asked for only once the head authenticated: no 100 Continue, no buffering, for a stranger.
        await continue_if_expected(request)
        return await _read_body(request, gateway.config, operation)

    try:
        call = await services.pipeline.authorize_dynamodb(admitted.access, head, read_body, gateway)
    except IdgateError:
        metrics.child(metrics.gateway_calls, operation, "deny").inc()
        raise
    if _attempt(request.headers.get("amz-sdk-request", "")) > 1:
        metrics.child(metrics.dynamodb_retries, operation).inc()
    answer = await _forward(services, gateway, admitted.access, call)
    return web.Response(status=answer.status, body=answer.body, headers=answer.headers)


async def _forward(services: Services, gateway: DynamoDbGateway, access: AccessRequest, call: GatewayCall) -> Answer:
    started = time.perf_counter()
    operation = call.call.operation
    metrics = services.metrics
    try:
        with services.tracing.client(SpanName.DYNAMODB) as span:
            # AWS's own conventions; the operation is a known one (the call was decoded).
            span.set("rpc.system", "aws-api")
            span.set("rpc.service", "DynamoDB")
            span.set("rpc.method", operation)
            answer = await gateway.send(operation, call.body, call.client_headers, call.credentials)
            span.set("http.response.status_code", answer.status)
    except IdgateError as failure:
        services.pipeline.record_failure(access, call.decision, failure, bytes_in=len(call.body),
                                         duration=time.perf_counter() - started)
        metrics.child(metrics.gateway_calls, operation, "error").inc()
        raise
    metrics.child(metrics.dynamodb_seconds, operation).observe(answer.seconds)
    error = error_type(answer.body) if answer.status != 200 else None
    if error in _THROTTLED:
        metrics.child(metrics.dynamodb_throttles, operation).inc()
    if error == "ValidationException" and _SCHEMA_MISMATCH in answer.body.decode("utf-8", "replace"):
        # The table was recreated with other keys: the next call reads its key schema afresh.
        gateway.schemas.drop(table_namer(call.caller.session.role_arn, gateway.region).account, call.call.tables)
    # A page of up to 1 MB (a batch answer up to 16 MB) is JSON to read for the record: not on the loop.
    try:
        view = await gateway.off_loop(len(answer.body), functools.partial(outcome_view, error_type=error),
                                      call.call, call.schemas, answer.status, answer.body, call.redact)
    except IdgateError:      # the gateway's thread stayed busy: the answer goes back, its record says less
        view = {"status": answer.status, "error": error, "unread": True}
    request_id = answer.header("x-amzn-requestid")
    if request_id:
        view["aws_request_id"] = request_id[:128]
    services.pipeline.record_dynamodb_outcome(access, call, view, bytes_in=len(call.body),
                                              bytes_out=len(answer.body), duration=time.perf_counter() - started)
    metrics.child(metrics.gateway_calls, operation, "allow" if error is None else "error").inc()
    return answer


def _attempt(header: str) -> int:
    """Which attempt of the SDK's a call is (`amz-sdk-request: attempt=2; max=3`): a retry is above 1."""
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == "attempt" and value.isascii() and value.isdigit() and len(value) <= 6:
            return int(value)
    return 1


def _operation_label(signed: SignedRequest) -> str:
    """The metric label of a call's operation: a known one, or "unknown" (the label set stays bounded)."""
    target = next((v for k, v in signed.headers if k.lower() == "x-amz-target"), "")
    name = target.removeprefix(TARGET_PREFIX)
    return name if target.startswith(TARGET_PREFIX) and name in PARAMETERS else "unknown"


async def _read_body(request: web.Request, config: GatewayConfig, operation: str) -> bytes:
    """The whole body, at most what DynamoDB takes for the operation, from a client that keeps sending it."""
    limit = min(config.max_body_bytes, MAX_BODY_BYTES.get(operation, MAX_ITEM_CALL_BYTES))
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLarge("the request is larger than DynamoDB accepts", reason=Reason.BODY_TOO_LARGE)
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            async with asyncio.timeout(config.read_timeout):
                chunk = await request.content.read(65536)
        except TimeoutError:
            raise RequestTimeout("the request body stopped arriving", reason=Reason.BODY_TIMEOUT) from None
        except RequestPayloadError as exc:   # a body the parser could not read (a broken chunked framing)
            raise BadRequest("the request body is malformed", reason=Reason.MALFORMED_BODY) from exc
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge("the request is larger than DynamoDB accepts", reason=Reason.BODY_TOO_LARGE)
        chunks.append(chunk)
