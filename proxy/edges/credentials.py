"""Container-credentials surface for botocore's container provider: `GET <credentials.path>[?role=NAME]`
with the caller's token in `Authorization` (raw, as botocore sends it, or `Bearer <token>`); answers
{"AccessKeyId","SecretAccessKey","Token","Expiration"} or the audited JSON denial."""

from __future__ import annotations

import functools
import re

from aiohttp import web

from proxy.core.hosts import is_loopback
from proxy.core.reasons import Reason
from proxy.edges._http import REQUEST_ID, SURFACE, client_addr, request_host
from proxy.core.errors import AccessDenied, BadRequest, DependencyError
from proxy.core.model import AccessRequest, Surface
from proxy.oidc import bearer_token
from proxy.services import SERVICES

# A compact JWS as botocore sends it (no scheme); the verifier checks the shape strictly afterwards.
_RAW_TOKEN = re.compile(r"[A-Za-z0-9_.\-]+", re.ASCII)
# A role name (the ARN's last path segment) or a whole role ARN.
_ROLE = re.compile(r"[\w+=,.@:/-]{1,600}", re.ASCII)
_is_loopback = functools.lru_cache(maxsize=1024)(is_loopback)   # parses an IP address: once per peer


def container_token(values: list[str]) -> str | None:
    """The token of the one Authorization header: botocore sends the token file verbatim, other
    clients send `Bearer <token>`."""
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest("exactly one Authorization header is allowed", reason=Reason.MALFORMED_AUTHORIZATION)
    value = values[0]
    if " " in value:
        return bearer_token(value)
    if not _RAW_TOKEN.fullmatch(value):
        raise BadRequest("malformed Authorization header", reason=Reason.MALFORMED_AUTHORIZATION)
    return value


def requested_role(request: web.Request) -> str | None:
    roles = request.query.getall("role", [])
    if len(roles) > 1 or set(request.query) - {"role"}:
        raise BadRequest("the only query parameter is one ?role=", reason=Reason.BAD_QUERY)
    if roles and not _ROLE.fullmatch(roles[0]):
        raise BadRequest("invalid role name", reason=Reason.BAD_ROLE)
    return roles[0] if roles else None


async def handle(request: web.Request) -> web.Response:
    request[SURFACE] = Surface.CREDENTIALS
    services = request.app[SERVICES]
    peer = client_addr(request)
    if services.config.listen.tls is None and not _is_loopback(peer):
        # botocore itself only sends plain http to loopback: anything else here would put a secret on the wire.
        raise AccessDenied("credentials are served over plain http to loopback clients only", reason=Reason.INSECURE_TRANSPORT)
    if request.method != "GET":
        raise BadRequest("the credentials endpoint answers GET only", reason=Reason.METHOD_NOT_ALLOWED)
    broker = services.broker
    if broker is None:
        raise DependencyError("the credential broker is not running", reason=Reason.BROKER_UNAVAILABLE)
    role = requested_role(request)
    access = AccessRequest(
        surface=Surface.CREDENTIALS, request_id=request[REQUEST_ID], method="GET", host=request_host(request),
        path=services.config.credentials.path, client_addr=peer,
    )
    token = container_token(request.headers.getall("Authorization", []))
    _, credentials = await services.pipeline.authorize_aws(access, token, role, broker)
    return web.Response(body=credentials.container_body(), content_type="application/json",
                        headers={"Cache-Control": "no-store"})
