"""Envoy gRPC ext_authz surface (envoy.service.auth.v3.Authorization/Check): CheckRequest bytes in,
CheckResponse bytes out; every failure, malformed input included, becomes an audited denial here."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.protobuf.message import DecodeError
from cachetools import LRUCache
from google.rpc.status_pb2 import Status

from proxy.core.reasons import Reason
from proxy.edges import _ext_authz
from proxy.edges._admission import Gate, Received
from proxy.core.errors import BadRequest, IdgateError
from proxy.core.headers import request_id
from proxy.core.model import Surface
from proxy.pipeline import RejectedTarget
from proxy.services import Services
from proxy.edges._errors import error_parts
from proxy.edges._in_flight import InFlight

log = logging.getLogger("idgate.ext_authz_grpc")

SURFACE = Surface.EXT_AUTHZ_GRPC
GATE = Gate(SURFACE, trusted_peers_only=True, forwarded_by_peer=True)
SERVICE = "envoy.service.auth.v3.Authorization"
METHOD = "Check"
SPAN_NAME = f"{SERVICE}/{METHOD}"      # gRPC's span naming convention

# The call's request headers the gRPC listener keeps for us (proxy.transport.h2.server.Metadata).
Metadata = tuple[tuple[bytes, bytes], ...]
_OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
# google.rpc.Code: what Envoy's access log shows as the check's outcome.
_GRPC_CODE = {400: 3, 401: 16, 403: 7, 431: 3, 503: 14}
_PERMISSION_DENIED = 7


def _check_of(message: CheckRequest, rid: str, peer: str) -> tuple[Received, Callable[[Received], Received]]:
    """The check as received, and how to read the rest of Envoy's account of the original request (its
    headers and the client address Envoy saw), which admission does only once the peer is trusted."""
    attributes = message.attributes
    if not attributes.request.HasField("http"):
        raise BadRequest("the check request carries no HTTP request attributes", reason=Reason.NOT_HTTP_CHECK)
    http = attributes.request.http
    if not http.path:
        raise BadRequest("the check request has no :path", reason=Reason.MISSING_PATH)
    if not http.method or not http.host:
        raise BadRequest("the check request has no :method or :authority", reason=Reason.MISSING_ATTRIBUTES)

    def original(check: Received) -> Received:
        if http.header_map.headers:
            # encode_raw_headers: true sends values as bytes; a header that is not text is not a header we accept.
            try:
                pairs = [(h.key, h.raw_value.decode("ascii") if h.raw_value else h.value) for h in http.header_map.headers]
            except UnicodeDecodeError as exc:
                raise BadRequest("a request header is not ASCII", reason=Reason.BAD_HEADER) from exc
        else:
            pairs = list(http.headers.items())
        # Pseudo-headers repeat method, path and authority, which come from their own fields.
        headers = [(name, value) for name, value in pairs if not name.startswith(":")]
        source = attributes.source.address.socket_address.address
        return check._replace(headers=headers, client_addr=source or peer)

    received = Received(request_id=rid, peer=peer, client_addr=peer, method=http.method, hosts=(http.host,),
                        target=http.path, headers=())
    return received, original


def _header_options(pairs: Sequence[tuple[str, str]]) -> list[HeaderValueOption]:
    # keep_empty_value: an empty X-Idgate-Groups must still overwrite a spoofed one.
    return [HeaderValueOption(header=HeaderValue(key=name, value=value), append_action=_OVERWRITE, keep_empty_value=True)
            for name, value in pairs]


# An allow answer is a pure function of the headers it sets and removes, the rule and the subject, and
# the same caller gets the same assertion for half its lifetime: building the message costs more than
# the rest of the check, so the serialized answer is kept.  (Bounded; it holds no secret the upstream
# does not get anyway.)
_ALLOW_CACHE_SIZE = 4096


def allow_response(allowed: _ext_authz.Allowed) -> CheckResponse:
    identity = allowed.decision.identity
    response = CheckResponse(
        status=Status(code=0),
        ok_response=OkHttpResponse(headers=_header_options(allowed.set_headers), headers_to_remove=allowed.remove_headers),
    )
    # Envoy puts these under the filter's namespace, where its access log can print them.
    response.dynamic_metadata.update({
        "rule": allowed.decision.rule_id or "", "subject": identity.subject if identity else "", "decision": "allow",
    })
    return response


def deny_response(err: IdgateError, rid: str) -> CheckResponse:
    headers, body = error_parts(err, rid)
    headers["Content-Type"] = "application/json; charset=utf-8"
    response = CheckResponse(
        status=Status(code=_GRPC_CODE.get(err.status, _PERMISSION_DENIED), message=err.message),
        denied_response=DeniedHttpResponse(
            status=HttpStatus(code=err.status),   # the enum's values are the HTTP codes
            headers=_header_options(list(headers.items())),
            body=json.dumps(body, separators=(",", ":")),
        ),
    )
    response.dynamic_metadata.update({"request_id": rid, "reason": err.reason, "decision": "deny"})
    return response


class _Metadata:
    """The call's gRPC metadata as a tracing carrier (a value that is not ASCII fails the parse, as it should)."""

    __slots__ = ("_pairs",)

    def __init__(self, pairs: Metadata) -> None:
        self._pairs = pairs

    def getall(self, key: str, default: list[str], /) -> list[str]:
        name = key.encode()
        return [value.decode("ascii", "replace") for found, value in self._pairs if found == name] or default


def _rejected(peer: str, rid: str, http: Any) -> RejectedTarget:
    """A refused check as received: as much of it as was decoded (built only for a refusal)."""
    if http is None:
        return RejectedTarget(SURFACE, rid, peer, "", "", "")
    return RejectedTarget(SURFACE, rid, peer, http.method, http.host, http.path.split("?", 1)[0])


class CheckHandler:
    """The Check method: bytes in, bytes out, so that a malformed message is ours to answer."""

    def __init__(self, services: Services, in_flight: InFlight) -> None:
        self._services = services
        self._in_flight = in_flight
        self._allowed_count = services.metrics.requests.labels(SURFACE.value, "allow", "200")
        self._allow_cache: LRUCache[tuple[object, ...], bytes] = LRUCache(maxsize=_ALLOW_CACHE_SIZE)

    async def check(self, raw: bytes, peer: str, metadata: Metadata = ()) -> bytes:
        """A serialized CheckRequest from `peer` (an IP address) → a serialized CheckResponse.  Never raises.
        `metadata` may hold Envoy's trace context (its ext_authz span: the parent of this check's)."""
        self._in_flight.enter()
        try:
            with self._services.tracing.server(SURFACE, "POST", peer, _Metadata(metadata), SPAN_NAME) as span:
                span.set("rpc.system", "grpc")
                answer, status = await self._answer(raw, peer)
                span.answered(status)    # the HTTP status the check gave the original request
                return answer
        finally:
            self._in_flight.leave()

    async def _answer(self, raw: bytes, peer: str) -> tuple[bytes, int]:
        services = self._services
        rid = ""
        http: Any = None       # the message's HttpRequest attributes, once decoded
        try:
            try:
                message = CheckRequest.FromString(raw)
            except DecodeError as exc:
                raise BadRequest("the check request is not a valid CheckRequest", reason=Reason.MALFORMED_CHECK) from exc
            http = message.attributes.request.http
            # Envoy's x-request-id (http.id is its stream number), so the audit joins Envoy's access log;
            # believed from a trusted Envoy only.
            rid = request_id(http.headers.get("x-request-id") or http.id or None, trusted_peer=peer in services.trusted)
            received, original = _check_of(message, rid, peer)
            allowed = await _ext_authz.authorize(services, GATE, received, original)
        except IdgateError as err:
            return await self._deny(err, _rejected(peer, rid, http))
        except Exception:  # noqa: BLE001 - a bug must still answer Envoy with a denial, never an allow
            log.exception("ext_authz gRPC check failed")
            return await self._deny(IdgateError("internal error", reason=Reason.INTERNAL), _rejected(peer, rid, http))
        self._allowed_count.inc()
        identity = allowed.decision.identity
        key = (allowed.set_headers, allowed.remove_headers, allowed.decision.rule_id, identity.subject if identity else None)
        answer = self._allow_cache.get(key)
        if answer is None:
            answer = self._allow_cache[key] = allow_response(allowed).SerializeToString()
        return answer, 200

    async def _deny(self, err: IdgateError, target: RejectedTarget) -> tuple[bytes, int]:
        rid = target.request_id or request_id(None, trusted_peer=False)
        err = await self._services.pipeline.refuse(target._replace(request_id=rid), err)
        self._services.metrics.requests.labels(SURFACE.value, "deny", str(err.status)).inc()
        return bytes(deny_response(err, rid).SerializeToString()), err.status
