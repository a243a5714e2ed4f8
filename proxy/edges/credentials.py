"""Container-credentials surface for botocore's container provider: `GET <credentials.path>[?role=NAME]`
with the caller's token in `Authorization` (raw, as botocore sends it, or `Bearer <token>`); answers
{"AccessKeyId","SecretAccessKey","Token","Expiration"} or the audited JSON denial."""

from __future__ import annotations

import functools
import re

from aiohttp import web

from proxy.core.errors import AccessDenied, BadRequest, DependencyError
from proxy.core.hosts import is_loopback
from proxy.core.model import Surface
from proxy.core.reasons import Reason
from proxy.edges._admission import Gate, TokenForm, admit
from proxy.edges._http import client_addr, received
from proxy.services import SERVICES

SURFACE = Surface.CREDENTIALS
GATE = Gate(SURFACE, token_form=TokenForm.CONTAINER, methods=frozenset({"GET"}))

# A role name (the ARN's last path segment) or a whole role ARN.
_ROLE = re.compile(r"[\w+=,.@:/-]{1,600}", re.ASCII)
_is_loopback = functools.lru_cache(maxsize=1024)(is_loopback)   # parses an IP address: once per peer


def requested_role(request: web.Request) -> str | None:
    roles = request.query.getall("role", [])
    if len(roles) > 1 or set(request.query) - {"role"}:
        raise BadRequest("the only query parameter is one ?role=", reason=Reason.BAD_QUERY)
    if roles and not _ROLE.fullmatch(roles[0]):
        raise BadRequest("invalid role name", reason=Reason.BAD_ROLE)
    return roles[0] if roles else None


async def handle(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    if services.config.listen.tls is None and not _is_loopback(client_addr(request)):
        # botocore itself only sends plain http to loopback: anything else here would put a secret on the wire.
        raise AccessDenied("credentials are served over plain http to loopback clients only", reason=Reason.INSECURE_TRANSPORT)
    admitted = await admit(services, GATE, received(request))
    broker = services.broker
    if broker is None:
        raise DependencyError("the credential broker is not running", reason=Reason.BROKER_UNAVAILABLE)
    role = requested_role(request)
    _, credentials = await services.pipeline.authorize_aws(admitted.access, admitted.token, role, broker,
                                                          services.gateway)
    return web.Response(body=credentials.container_body(), content_type="application/json",
                        headers={"Cache-Control": "no-store"})
