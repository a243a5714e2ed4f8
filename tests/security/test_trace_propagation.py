"""Red team of trace propagation (issue 13): what a stranger's or a trusted peer's spoiled trace context makes
idgate believe, export, audit and send on, on every surface.  The parsing matrix runs on proxy.tracing.otel
with the SDK's in-memory exporter (cheap, every variant); what crosses the wire runs on the real stack."""

from __future__ import annotations

import secrets
import time

import grpc
import pytest
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from multidict import CIMultiDict
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxy.config import TracingConfig
from proxy.core.headers import TrustedProxies
from proxy.core.model import Surface
from proxy.metrics import Metrics
from proxy.tracing.otel import OtelTracing
from tests.harness.processes import HOST

TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
PARENT = f"00-{TRACE}-{SPAN}-01"
TRUSTED_PEER, STRANGER = "10.1.2.3", "203.0.113.7"
CHECK = "/envoy.service.auth.v3.Authorization/Check"
# A stranger's context, in the spellings an upstream framework may read as the same header.
STRANGE_CONTEXT = (("baggage", "user.id=admin"), ("x-amzn-trace-id", "Root=1-5759e988-bd862e3fe1be46a994272793"),
                   ("x_amzn_trace_id", "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"),
                   ("tracestate", "vendor=abc"))


def traced(**config: object) -> tuple[OtelTracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing = OtelTracing(TracingConfig(**config), TrustedProxies(["10.0.0.0/8"]), Metrics(),  # type: ignore[arg-type]
                          exporter=exporter)
    return tracing, exporter


def one_request(tracing: OtelTracing, peer: str, headers: list[tuple[str, str]]) -> tuple[dict[str, str], dict[str, str]]:
    """The audit stamp and the headers idgate would send upstream for one request from `peer`."""
    record: dict[str, str] = {}
    upstream: list[tuple[str, str]] = list(headers)
    with tracing.server(Surface.PROXY, "GET", peer, CIMultiDict(headers)):
        tracing.stamp(record)
        tracing.inject(upstream)
    return record, dict(upstream)


MALFORMED_TRACEPARENTS = {
    "version-ff": [f"ff-{TRACE}-{SPAN}-01"],
    "future-version-extra-field": [f"cc-{TRACE}-{SPAN}-01-what-the-future-holds"],
    "upper-case": [PARENT.upper()],
    "zero-trace-id": [f"00-{'0' * 32}-{SPAN}-01"],
    "zero-span-id": [f"00-{TRACE}-{'0' * 16}-01"],
    "short-trace-id": [f"00-{TRACE[:-1]}-{SPAN}-01"],
    "long-span-id": [f"00-{TRACE}-{SPAN}0-01"],
    "version-00-extra-field": [f"{PARENT}-00"],
    "inner-whitespace": [f"00- {TRACE}-{SPAN}-01"],
    "two-header-lines": [PARENT, PARENT],
    "comma-joined": [f"{PARENT},{PARENT}"],
    "non-ascii-digit": [PARENT.replace("4", "\u0664", 1)],     # ARABIC-INDIC DIGIT FOUR: \d would take it
    "huge": [PARENT + "0" * 65536],
}


@pytest.mark.parametrize("values", MALFORMED_TRACEPARENTS.values(), ids=MALFORMED_TRACEPARENTS.keys())
async def test_a_malformed_traceparent_from_a_trusted_peer_never_becomes_the_parent(values: list[str]) -> None:
    tracing, exporter = traced()
    record, upstream = one_request(tracing, TRUSTED_PEER, [("traceparent", v) for v in values])
    await tracing.flush()
    (span,) = exporter.get_finished_spans()
    assert span.parent is None and record["trace_id"] != TRACE
    assert TRACE not in upstream["traceparent"] and upstream["traceparent"].startswith(f"00-{record['trace_id']}-")


async def test_an_untrusted_peers_traceparent_never_becomes_the_parent_nor_forces_sampling() -> None:
    tracing, exporter = traced(sampling_ratio=0.0)
    record, upstream = one_request(tracing, STRANGER, [("traceparent", PARENT), ("tracestate", "vendor=abc")])
    await tracing.flush()
    assert exporter.get_finished_spans() == ()           # flag 01 from a stranger: sampling_ratio still decides
    assert record["trace_id"] != TRACE and upstream["traceparent"] == f"00-{record['trace_id']}-{record['span_id']}-00"
    assert "tracestate" not in upstream
    # The same header from a trusted peer decides its own trace's sampling (README: let Envoy sample).
    record, _ = one_request(tracing, TRUSTED_PEER, [("traceparent", PARENT)])
    await tracing.flush()
    (span,) = exporter.get_finished_spans()
    assert record["trace_id"] == TRACE and span.parent is not None and f"{span.parent.span_id:016x}" == SPAN


TRACESTATE_ABUSE = {
    "33-members": [",".join(f"k{i}=v" for i in range(33))],
    "over-512-chars": ["a=" + "v" * 255 + ",b=" + "v" * 255],
    "split-over-512-chars": ["a=" + "v" * 255, "b=" + "v" * 255],
    "upper-case-key": ["Vendor=abc"],
    "duplicate-key": ["vendor=abc,vendor=def"],
    "duplicate-key-across-lines": ["vendor=abc", "vendor=def"],
    "value-with-equals": ["vendor=a=b"],
    "non-ascii-value": ["vendor=\u00e9"],
    "control-character": ["vendor=a\x00b"],
}


@pytest.mark.parametrize("values", TRACESTATE_ABUSE.values(), ids=TRACESTATE_ABUSE.keys())
async def test_an_abusive_tracestate_is_dropped_and_the_trace_still_continues(values: list[str]) -> None:
    tracing, exporter = traced()
    headers = [("traceparent", PARENT), *(("tracestate", v) for v in values)]
    record, upstream = one_request(tracing, TRUSTED_PEER, headers)
    await tracing.flush()
    (span,) = exporter.get_finished_spans()
    assert record["trace_id"] == TRACE and "tracestate" not in upstream and not span.context.trace_state


@pytest.mark.parametrize("flag", ["01", "00"], ids=["sampled", "not-sampled"])
@pytest.mark.parametrize("state", ["1vendor=abc", "t" * 242 + "@vendor=abc", "tenant@" + "v" * 15 + "=abc"],
                         ids=["digit-first-simple-key", "tenant-over-241", "system-over-14"])
async def test_a_tracestate_key_outside_w3cs_grammar_is_dropped_alike_sampled_or_not(flag, state, caplog) -> None:
    # The SDK's TraceState refuses such a key with a WARNING per request; the sampled path dropped it, the
    # unsampled one passed it on: one rule (W3C's) decides both, before the SDK sees it.
    tracing, _ = traced()
    with caplog.at_level("WARNING", logger="opentelemetry"):
        record, upstream = one_request(tracing, TRUSTED_PEER, [("traceparent", f"00-{TRACE}-{SPAN}-{flag}"),
                                                               ("tracestate", f"{state},good=1")])
    assert record["trace_id"] == TRACE and "tracestate" not in upstream
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]
    _, upstream = one_request(tracing, TRUSTED_PEER, [("traceparent", f"00-{TRACE}-{SPAN}-{flag}"),
                                                      ("tracestate", "0tenant@vendor=abc,good=1")])
    assert upstream["tracestate"] == "0tenant@vendor=abc,good=1"       # a tenant may start with a digit


@pytest.mark.parametrize("ratio", [1.0, 0.0], ids=["sampled", "not-sampled"])
@pytest.mark.parametrize("peer", [STRANGER, TRUSTED_PEER], ids=["new-trace", "trusted-without-parent"])
async def test_the_xray_root_of_a_new_trace_starts_with_the_current_epoch(ratio: float, peer: str) -> None:
    # X-Ray reads Root's first 8 hex digits as the trace's start time and rejects segments of traces older
    # than 30 days: a random id there makes nearly every X-Ray trace unusable.
    tracing, _ = traced(xray_header=True, sampling_ratio=ratio)
    before = int(time.time())
    record, upstream = one_request(tracing, peer, [])
    after = int(time.time())
    root, parent, sampled = upstream["X-Amzn-Trace-Id"].split(";")
    version, epoch, unique = root.removeprefix("Root=").split("-")
    assert (version, len(epoch), len(unique)) == ("1", 8, 24) and epoch + unique == record["trace_id"]
    assert before <= int(epoch, 16) <= after
    assert parent == f"Parent={record['span_id']}" and sampled == f"Sampled={1 if ratio else 0}"


@pytest.mark.parametrize("xray", [True, False], ids=["xray-on", "xray-off"])
async def test_idgates_trace_context_upstream_is_the_only_one_in_any_spelling(xray: bool) -> None:
    # A framework that reads X_Amzn_Trace_Id as X-Amzn-Trace-Id (CGI, some servers) must not find the peer's
    # beside idgate's: what idgate replaces, it replaces in every spelling.
    tracing, _ = traced(xray_header=xray)
    record, upstream = one_request(tracing, TRUSTED_PEER, [
        ("traceparent", PARENT), ("X_Amzn_Trace_Id", "Root=1-5759e988-bd862e3fe1be46a994272793"), ("TRACEPARENT", PARENT)])
    names = [name.lower().replace("_", "-") for name in upstream]
    assert names.count("traceparent") == 1 and upstream["traceparent"].startswith(f"00-{record['trace_id']}-")
    assert names.count("x-amzn-trace-id") == 1
    if xray:
        assert upstream["X-Amzn-Trace-Id"].startswith("Root=1-")
    else:
        assert upstream["X_Amzn_Trace_Id"] == "Root=1-5759e988-bd862e3fe1be46a994272793"   # trusted, not ours to replace


# --- on the wire ------------------------------------------------------------------------------------

async def test_forwarding_headers_do_not_make_a_stranger_trusted_for_trace_context(make_stack, otlp_receiver):
    # The peer trusted for trace context is elsewhere; the test client claims to be it in every way it can.
    stack = await make_stack(tracing={"endpoint": otlp_receiver.endpoint, "trusted_peers": ["10.9.9.9/32"]})
    claims = {"X-Forwarded-For": "10.9.9.9", "Forwarded": "for=10.9.9.9", "X-Real-IP": "10.9.9.9",
              "X-Envoy-External-Address": "10.9.9.9"}
    their_trace = secrets.token_hex(16)          # the receiver is shared: a trace id no other test sends
    marker = secrets.token_hex(8)
    headers = CIMultiDict([*claims.items(), ("traceparent", f"00-{their_trace}-{SPAN}-01"), *STRANGE_CONTEXT,
                           ("tracestate", f"vendor={marker}"), ("baggage", f"user.id={marker}")])
    assert (await stack.get("/v1/orders/7", token=stack.etl_token(), headers=headers)).status == 200
    await stack.idgate.settled()
    record = (await stack.decisions())[-1]
    received = stack.upstream.received[-1]
    assert record["trace_id"] != their_trace
    (traceparent,) = received.header("traceparent")
    assert traceparent.startswith(f"00-{record['trace_id']}-")
    for name, _ in STRANGE_CONTEXT:
        assert received.header(name) == [], name
    await stack.idgate.services.tracing.flush()
    await otlp_receiver.wait_for_trace(record["trace_id"], lambda spans: bool(spans), "the request's spans")
    exported = otlp_receiver.raw()
    assert bytes.fromhex(their_trace) not in exported and marker.encode() not in exported


def _check(headers: dict[str, str], source: str) -> CheckRequest:
    request = CheckRequest()
    request.attributes.source.address.socket_address.address = source
    http = request.attributes.request.http
    http.method, http.host, http.path = "GET", "orders.internal", "/v1/orders/7"
    http.headers.update(headers)
    return request


@pytest.mark.parametrize("tracing", [True, False], ids=["tracing-on", "tracing-off"])
async def test_ext_authz_removes_a_strangers_trace_context_from_the_allowed_request(make_stack, otlp_receiver, tracing):
    # Envoy (trusted) asks about a client's request; an allow must take the client's baggage and X-Ray header
    # off it, as the reverse proxy does, or they reach the upstream through Envoy.
    extra = {"tracing": {"endpoint": otlp_receiver.endpoint}} if tracing else {}
    stack = await make_stack(trusted_proxies=[f"{HOST}/32"], ext_authz={"http": {}, "grpc": {"host": HOST, "port": 0}},
                             **extra)
    token = stack.etl_token()
    context = {name.lower(): value for name, value in STRANGE_CONTEXT}
    request = _check({"authorization": f"Bearer {token}", **context}, STRANGER)
    async with grpc.aio.insecure_channel(f"{HOST}:{stack.idgate.listeners.grpc_port}") as channel:
        answer = CheckResponse.FromString(await channel.unary_unary(CHECK)(request.SerializeToString(), timeout=10))
    assert answer.status.code == 0
    assert set(context) <= set(answer.ok_response.headers_to_remove)
    # Envoy's HTTP ext_authz: the client address Envoy wrote, and the answer's list of headers to remove.
    response = await stack.get("/.idgate/ext_authz/v1/orders/7", token=token,
                               headers=CIMultiDict([("X-Envoy-External-Address", STRANGER), *STRANGE_CONTEXT]))
    assert response.status == 200
    removed = response.headers["x-envoy-auth-headers-to-remove"].split(",")
    assert set(context) <= set(removed)
    # A client trusted for trace context keeps its own.
    request = _check({"authorization": f"Bearer {token}", **context}, HOST)
    async with grpc.aio.insecure_channel(f"{HOST}:{stack.idgate.listeners.grpc_port}") as channel:
        answer = CheckResponse.FromString(await channel.unary_unary(CHECK)(request.SerializeToString(), timeout=10))
    assert not set(context) & set(answer.ok_response.headers_to_remove)


async def test_forward_auth_never_answers_with_trace_context(make_stack, otlp_receiver):
    stack = await make_stack(trusted_proxies=[f"{HOST}/32"], tracing={"endpoint": otlp_receiver.endpoint})
    headers = CIMultiDict([("X-Original-Method", "GET"), ("X-Original-URI", "/v1/orders/7"),
                           ("X-Forwarded-Host", "orders.internal"), ("X-Forwarded-For", STRANGER),
                           ("traceparent", PARENT), *STRANGE_CONTEXT])
    response = await stack.get("/.idgate/auth", token=stack.etl_token(), headers=headers)
    assert response.status == 200
    answered = {name.lower().replace("_", "-") for name in response.headers}
    assert not answered & {"traceparent", "tracestate", "baggage", "x-amzn-trace-id"}
