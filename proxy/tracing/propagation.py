"""W3C Trace Context on the wire: the parent idgate believes, and the headers it writes upstream.

Believed (from trusted peers only: the caller checks) in the strict form alone, anything else starting a
new trace: exactly one traceparent of version 00, lower-case hex, neither id zero; a tracestate (all its
headers joined, as W3C allows) of at most 512 characters and 32 well-formed members with distinct keys,
else dropped on its own.  A parent only joins spans into one trace: no decision ever reads it.  Pure."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})", re.ASCII)
# W3C Trace Context §3.3.1: a simple key (a letter first) or a multi-tenant one (tenant@system), and a value of
# printable ASCII without ',' '='.  Exactly the grammar the SDK's TraceState checks, so a member believed here
# is passed on alike whether or not the request is sampled (the SDK would drop it, warning each time).
_MEMBER = re.compile(r"([a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
                     r"=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e])", re.ASCII)
MAX_TRACESTATE_CHARS = 512         # what W3C asks every vendor to pass on; more may be cut, so we drop it
MAX_TRACESTATE_MEMBERS = 32
_SAMPLED = 0x01

TraceState = tuple[tuple[str, str], ...]


class Parent(NamedTuple):
    trace_id: int
    span_id: int
    sampled: bool
    tracestate: TraceState


def parse_traceparent(values: Sequence[str]) -> tuple[int, int, bool] | None:
    """(trace id, span id, sampled) of the one well-formed traceparent among `values`, else None."""
    if len(values) != 1:
        return None
    match = _TRACEPARENT.fullmatch(values[0])
    if match is None:
        return None
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, bool(int(match[3], 16) & _SAMPLED)   # the other flags mean nothing to us


def parse_tracestate(values: Sequence[str]) -> TraceState:
    """The members of the tracestate headers, or () when they are too long, too many or malformed."""
    if sum(len(value) + 1 for value in values) > MAX_TRACESTATE_CHARS + 1:
        return ()              # measured before joining: a trusted peer's 100 large headers are not copied
    joined = ",".join(values)
    if not joined:
        return ()
    members: list[tuple[str, str]] = []
    for part in joined.split(","):
        part = part.strip(" \t")
        if not part:
            continue          # W3C allows empty list members
        match = _MEMBER.fullmatch(part)
        if match is None or any(key == match[1] for key, _ in members):
            return ()
        members.append((match[1], match[2]))
    return tuple(members) if len(members) <= MAX_TRACESTATE_MEMBERS else ()


def parse_parent(traceparent: Sequence[str], tracestate: Sequence[str]) -> Parent | None:
    ids = parse_traceparent(traceparent)
    if ids is None:
        return None      # a tracestate without its traceparent means nothing (W3C §3.3)
    return Parent(*ids, parse_tracestate(tracestate))


def format_traceparent(trace_hex: str, span_hex: str, sampled: bool) -> str:
    """From the ids in hex (32 and 16 lower-case digits), as the audit records write them."""
    return f"00-{trace_hex}-{span_hex}-{'01' if sampled else '00'}"


def format_tracestate(state: TraceState) -> str:
    return ",".join(f"{key}={value}" for key, value in state)


def format_xray(trace_hex: str, span_hex: str, sampled: bool) -> str:
    """AWS X-Ray's X-Amzn-Trace-Id for the same trace: Root=1-<8 hex>-<24 hex>;Parent=<16 hex>;Sampled=0|1."""
    return f"Root=1-{trace_hex[:8]}-{trace_hex[8:]};Parent={span_hex};Sampled={1 if sampled else 0}"
