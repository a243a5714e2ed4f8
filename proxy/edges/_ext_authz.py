"""What the two Envoy ext_authz surfaces share: admission of Envoy's description of the original
request, the pipeline call, and the headers an allow sets on and removes from it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

from proxy.assertion import audience
from proxy.core.headers import TRACE_CONTEXT_HEADERS
from proxy.core.model import AccessRequest, Decision
from proxy.edges._admission import Gate, Received, admit
from proxy.edges._http import IDENTITY_HEADER_NAMES, identity_headers
from proxy.services import Services

# Identity headers some upstream framework or auth proxy trusts: removed from every allowed request
# even when Envoy did not show them to idgate (its allowed_headers may be narrower than ours).
ALWAYS_REMOVED = ("x-forwarded-user", "x-forwarded-email", "x-forwarded-groups",
                  "x-forwarded-preferred-username", "x-remote-user", "remote-user")


class Allowed(NamedTuple):
    decision: Decision
    access: AccessRequest
    set_headers: tuple[tuple[str, str], ...]    # overwrite on the upstream request (lower-case names)
    remove_headers: tuple[str, ...]             # lower-case names to delete from the upstream request


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


_SET_NAMES = frozenset(name.lower() for name in IDENTITY_HEADER_NAMES)


@functools.lru_cache(maxsize=256)     # nearly always the same: no identity headers were sent
def _remove(identity: tuple[str, ...], forward_token: bool, context: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """`context`: the client's trace context headers, to remove (None: a client trusted for them keeps them)."""
    set_names = _SET_NAMES
    remove = [] if forward_token else ["authorization"]
    remove += [n for n in ALWAYS_REMOVED if n not in set_names]
    remove += [n for n in identity if n not in set_names and n not in remove]
    if context is not None:
        # Envoy passes the client's request on with them: from a stranger they would pick the trace an
        # upstream joins or plant baggage it reads as fact, as on the reverse proxy (core/headers.py).
        remove += [n for n in (*sorted(TRACE_CONTEXT_HEADERS), *context) if n not in remove]
    return tuple(remove)


async def authorize(services: Services, gate: Gate, received: Received,
                    original: Callable[[Received], Received] | None = None) -> Allowed:
    """The allow with its header changes, or the audited IdgateError to deny with."""
    admitted = await admit(services, gate, received, original)
    access = admitted.access
    decision = await services.pipeline.authorize(access, admitted.token)
    set_headers = tuple((name.lower(), value)
                        for name, value in identity_headers(services, decision, audience(gate.surface, access.host)))
    context = None if access.client_addr in services.tracing.peers else admitted.context_headers
    return Allowed(decision, access, set_headers,
                   _remove(admitted.identity_headers, services.config.ext_authz.forward_token, context))
