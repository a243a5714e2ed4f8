"""What the two Envoy ext_authz surfaces share: turning Envoy's description of the original request
into an AccessRequest, the pipeline call, and the headers an allow sets on and removes from it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from proxy.config import LimitsConfig
from proxy.core.reasons import Reason
from proxy.edges._http import identity_headers, parse_host
from proxy.core.errors import BadRequest, HeadersTooLarge, IdgateError
from proxy.core.headers import OVERRIDE_HEADERS, is_identity_header
from proxy.core.model import AccessRequest, Decision, Surface
from proxy.oidc import bearer_token
from proxy.core.paths import normalize_path, split_target
from proxy.pipeline import RejectedTarget
from proxy.services import Services

_METHOD = re.compile(r"[A-Z]{1,16}")

# Identity headers some upstream framework or auth proxy trusts: removed from every allowed request
# even when Envoy did not show them to idgate (its allowed_headers may be narrower than ours).
ALWAYS_REMOVED = ("x-forwarded-user", "x-forwarded-email", "x-forwarded-groups",
                  "x-forwarded-preferred-username", "x-remote-user", "remote-user")


@dataclass(frozen=True, slots=True)
class EnvoyCheck:
    """Envoy's account of the original request, before idgate has believed any of it."""

    surface: Surface
    request_id: str
    method: str
    authority: str                          # :authority / Host as the client sent it
    target: str                             # path and query exactly as the upstream will receive them
    headers: Sequence[tuple[str, str]]      # the original request headers Envoy passed on
    client_addr: str                        # the downstream address as Envoy saw it


@dataclass(frozen=True, slots=True)
class Allowed:
    decision: Decision
    access: AccessRequest
    set_headers: tuple[tuple[str, str], ...]    # overwrite on the upstream request (lower-case names)
    remove_headers: tuple[str, ...]             # lower-case names to delete from the upstream request


@dataclass(slots=True)
class _Headers:
    """What idgate needs from the header map, gathered in one pass (this runs on every check)."""

    authorization: list[str] = field(default_factory=list)
    identity: list[str] = field(default_factory=list)      # lower-case names of client-sent identity headers


def _scan(headers: Sequence[tuple[str, str]], limits: LimitsConfig) -> _Headers:
    """The head limits the main listener applies, the override-header refusal, and the headers an
    allow must act on."""
    if len(headers) > limits.max_headers:
        raise HeadersTooLarge("too many request headers", reason=Reason.TOO_MANY_HEADERS)
    found = _Headers()
    for name, value in headers:
        if len(name) + len(value) > limits.max_header_bytes:
            raise HeadersTooLarge("a request header is too large", reason=Reason.HEADER_TOO_LARGE)
        lower = name.lower()
        if lower == "authorization":
            found.authorization.append(value)
            continue
        norm = lower.replace("_", "-")   # some servers (and CGI) read both spellings as one header
        if norm in OVERRIDE_HEADERS:
            raise BadRequest("method or URL override headers are not accepted", reason=Reason.OVERRIDE_HEADER)
        if is_identity_header(norm):
            found.identity.append(lower)
    return found


def envoy_client_addr(headers: Sequence[tuple[str, str]]) -> str | None:
    """The client address Envoy (use_remote_address: true) wrote: x-envoy-external-address, else the
    last X-Forwarded-For entry, which Envoy appended itself.  Believe only from a trusted Envoy."""
    external: list[str] = []
    forwarded: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower == "x-envoy-external-address":
            external.append(value.strip())
        elif lower == "x-forwarded-for":
            forwarded.append(value)
    if len(external) == 1 and external[0]:
        return external[0]
    last = ",".join(forwarded).rsplit(",", 1)[-1].strip()
    return last or None


def _parse(check: EnvoyCheck, limits: LimitsConfig) -> tuple[AccessRequest, str, _Headers, str | None]:
    found = _scan(check.headers, limits)
    if not _METHOD.fullmatch(check.method):
        raise BadRequest("invalid original method", reason=Reason.BAD_METHOD)
    raw_path, _query = split_target(check.target)
    access = AccessRequest(
        surface=check.surface, request_id=check.request_id, method=check.method, host=parse_host(check.authority),
        path=normalize_path(raw_path), client_addr=check.client_addr,
    )
    if len(found.authorization) > 1:
        raise BadRequest("more than one Authorization header", reason=Reason.DUPLICATE_AUTHORIZATION)
    token = bearer_token(found.authorization[0] if found.authorization else None)
    return access, raw_path, found, token


def _remove(found: _Headers, set_names: frozenset[str], forward_token: bool) -> tuple[str, ...]:
    remove = [] if forward_token else ["authorization"]
    remove += [n for n in ALWAYS_REMOVED if n not in set_names]
    remove += [n for n in found.identity if n not in set_names and n not in remove]
    return tuple(remove)


async def authorize(services: Services, check: EnvoyCheck) -> Allowed:
    """The allow with its header changes, or the audited IdgateError to deny with."""
    try:
        access, raw_path, found, token = _parse(check, services.config.limits)
    except IdgateError as err:
        target = RejectedTarget(surface=check.surface, request_id=check.request_id, client_addr=check.client_addr,
                                method=check.method, host=check.authority, raw_path=check.target.split("?", 1)[0])
        raise await services.pipeline.refuse(target, err) from None
    decision = await services.pipeline.authorize(access, token)
    if access.path != raw_path:
        # Envoy forwards the path as the client wrote it and idgate cannot rewrite it: allowing would
        # send the upstream a spelling idgate did not authorize (a `..` or `%2e` it may resolve
        # differently).  The decision record says what the policy said; the outcome, what happened.
        refused = BadRequest("the request path is not in canonical form", reason=Reason.NON_CANONICAL_PATH)
        services.pipeline.record_failure(access, decision, refused)
        raise refused
    set_headers = tuple((name.lower(), value) for name, value in identity_headers(services, decision, access.host))
    set_names = frozenset(name for name, _ in set_headers)
    return Allowed(decision, access, set_headers, _remove(found, set_names, services.config.ext_authz.forward_token))
