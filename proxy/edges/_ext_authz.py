"""What the two Envoy ext_authz surfaces share: turning Envoy's description of the original request
into an AccessRequest, the pipeline call, and the headers an allow sets on and removes from it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.config import LimitsConfig
from proxy.edges._http import identity_headers, parse_host
from proxy.errors import BadRequest, HeadersTooLarge, IdgateError
from proxy.headers import OVERRIDE_HEADERS, is_identity_header, normalized_name
from proxy.model import AccessRequest, Decision, Surface
from proxy.oidc import bearer_token
from proxy.paths import normalize_path, split_target
from proxy.pipeline import RejectedTarget
from proxy.runtime import Services

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
    set_headers: list[tuple[str, str]]      # overwrite on the upstream request
    remove_headers: list[str]               # lower-case names to delete from the upstream request


def check_header_limits(headers: Sequence[tuple[str, str]], limits: LimitsConfig) -> None:
    """The same head limits the main listener applies, for header maps that arrive inside a message."""
    if len(headers) > limits.max_headers:
        raise HeadersTooLarge("too many request headers", reason="too_many_headers")
    for name, value in headers:
        if len(name) + len(value) > limits.max_header_bytes:
            raise HeadersTooLarge("a request header is too large", reason="header_too_large")


def envoy_client_addr(headers: Sequence[tuple[str, str]]) -> str | None:
    """The client address Envoy (use_remote_address: true) wrote: x-envoy-external-address, else the
    last X-Forwarded-For entry, which Envoy appended itself.  Believe only from a trusted Envoy."""
    external = [v for n, v in headers if n.lower() == "x-envoy-external-address"]
    if len(external) == 1 and external[0].strip():
        return external[0].strip()
    forwarded = ",".join(v for n, v in headers if n.lower() == "x-forwarded-for")
    last = forwarded.rsplit(",", 1)[-1].strip()
    return last or None


def _token(headers: Sequence[tuple[str, str]]) -> str | None:
    values = [v for n, v in headers if n.lower() == "authorization"]
    if len(values) > 1:
        raise BadRequest("more than one Authorization header", reason="duplicate_authorization")
    return bearer_token(values[0] if values else None)


def _parse(check: EnvoyCheck, limits: LimitsConfig) -> tuple[AccessRequest, str, str | None]:
    check_header_limits(check.headers, limits)
    if not _METHOD.fullmatch(check.method):
        raise BadRequest("invalid original method", reason="bad_method")
    for name, _ in check.headers:
        if normalized_name(name) in OVERRIDE_HEADERS:
            raise BadRequest("method or URL override headers are not accepted", reason="override_header")
    raw_path, query = split_target(check.target)
    access = AccessRequest(
        surface=check.surface, request_id=check.request_id, method=check.method, host=parse_host(check.authority),
        path=normalize_path(raw_path), client_addr=check.client_addr, query=query,
    )
    return access, raw_path, _token(check.headers)


def _remove(check: EnvoyCheck, set_names: frozenset[str], forward_token: bool) -> list[str]:
    remove = [] if forward_token else ["authorization"]
    remove += [n for n in ALWAYS_REMOVED if n not in set_names]
    for name, _ in check.headers:
        lower = name.lower()
        if is_identity_header(normalized_name(name)) and lower not in set_names and lower not in remove:
            remove.append(lower)
    return remove


async def authorize(services: Services, check: EnvoyCheck) -> Allowed:
    """The allow with its header changes, or the audited IdgateError to deny with."""
    try:
        access, raw_path, token = _parse(check, services.config.limits)
    except IdgateError as err:
        target = RejectedTarget(surface=check.surface, request_id=check.request_id, client_addr=check.client_addr,
                                method=check.method, host=check.authority, raw_path=check.target.split("?", 1)[0])
        await services.pipeline.record_rejection(target, err)
        raise
    decision = await services.pipeline.authorize(access, token)
    if access.path != raw_path:
        # Envoy forwards the path as the client wrote it and idgate cannot rewrite it: allowing would
        # send the upstream a spelling idgate did not authorize (a `..` or `%2e` it may resolve
        # differently).  The decision record says what the policy said; the outcome, what happened.
        refused = BadRequest("the request path is not in canonical form", reason="non_canonical_path")
        services.pipeline.record_outcome(access, decision, status=refused.status, bytes_in=0, bytes_out=0,
                                         duration=0.0, error=refused.reason)
        refused.audited = True
        raise refused
    set_headers = [(name.lower(), value) for name, value in identity_headers(services, decision, access.host)]
    set_names = frozenset(name for name, _ in set_headers)
    return Allowed(decision, access, set_headers, _remove(check, set_names, services.config.ext_authz.forward_token))
