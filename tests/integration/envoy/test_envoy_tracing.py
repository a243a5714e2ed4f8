"""One trace across Envoy, idgate and the application, with the shipped Envoy configs' OpenTelemetry tracer
and idgate both exporting to one real OTLP/HTTP receiver: Envoy's spans and idgate's share the trace id,
idgate's server span is a child of Envoy's ext_authz span, the application receives that trace's
traceparent, and the audit record names the trace; a denial's span carries its reason.  A client's own
trace context stops at Envoy: the trace is Envoy's, whatever traceparent the client sent."""

from __future__ import annotations

import secrets

import aiohttp

from tests.harness.otlp import OtlpReceiver, ReceivedSpan

SERVER = 2
IDGATE_SERVER_SPANS = ("GET ext_authz_http", "envoy.service.auth.v3.Authorization/Check")


def idgate_server(spans: list[ReceivedSpan]) -> ReceivedSpan:
    (found,) = [s for s in spans if s.service == "idgate" and s.kind == SERVER]
    return found


def has_both(spans: list[ReceivedSpan]) -> bool:
    services = {span.service for span in spans}
    # Envoy ends its ingress span with the response: wait for it and for idgate's server span.
    return "envoy" in services and any(s.service == "envoy" and s.parent_span_id == "" for s in spans) and \
        any(s.service == "idgate" and s.kind == SERVER for s in spans)


async def traced_envoy_stack(make_envoy_stack, receiver: OtlpReceiver):
    return await make_envoy_stack(collector_port=receiver.port, tracing={"endpoint": receiver.endpoint})


async def test_envoy_idgate_and_the_application_share_one_trace(make_envoy_stack, otlp_receiver, mode):
    # The receiver serves the whole session: only what arrives from here on is this test's (another test's
    # idgate may export the subject, with export_enduser_id).
    earlier = len(otlp_receiver.raw())
    stack = await traced_envoy_stack(make_envoy_stack, otlp_receiver)
    response = await stack.get("/v1/orders/7", token=stack.etl_token(), headers={"baggage": "user.id=admin"})
    assert response.status == 200
    await stack.idgate.settled()
    [record] = await stack.decisions()
    await stack.idgate.services.tracing.flush()
    spans = await otlp_receiver.wait_for_trace(record["trace_id"], has_both, "Envoy's and idgate's spans")
    ours = idgate_server(spans)
    assert ours.name in IDGATE_SERVER_SPANS and ours.span_id == record["span_id"]
    parent = next(s for s in spans if s.span_id == ours.parent_span_id)
    assert parent.service == "envoy"                 # idgate continued the trace Envoy's ext_authz call carried
    assert ours.attributes["idgate.rule"] == "etl-read-orders" and ours.attributes["idgate.decision"] == "allow"
    assert ours.attributes["enduser.pseudo.id"] and "svc-etl-7".encode() not in otlp_receiver.raw()[earlier:]
    (traceparent,) = stack.upstream.received[-1].header("traceparent")
    assert traceparent.split("-")[1] == record["trace_id"]       # Envoy's router passed the same trace on
    assert stack.upstream.received[-1].header("baggage") == []   # a client's baggage stops at Envoy


async def test_a_denial_through_envoy_carries_its_reason_on_idgates_span(make_envoy_stack, otlp_receiver, mode):
    stack = await traced_envoy_stack(make_envoy_stack, otlp_receiver)
    assert (await stack.get("/v1/orders/7", token=stack.web_token())).status == 403
    await stack.idgate.settled()
    [record] = await stack.decisions()
    await stack.idgate.services.tracing.flush()
    spans = await otlp_receiver.wait_for_trace(record["trace_id"], has_both, "Envoy's and idgate's spans")
    ours = idgate_server(spans)
    assert (ours.attributes["idgate.decision"], ours.attributes["idgate.reason"]) == ("deny", record["reasons"][0])
    assert ours.attributes["http.response.status_code"] == 403
    assert stack.upstream.received == []


async def test_a_strangers_x_ray_header_and_traceparent_stop_at_envoy(make_envoy_stack, otlp_receiver, mode):
    # The client connects from 127.0.0.2: not the trusted Envoy (127.0.0.1), so not trusted for trace context.
    # Envoy's shipped config removes baggage, traceparent and X-Amzn-Trace-Id itself; idgate's allow would too.
    stack = await traced_envoy_stack(make_envoy_stack, otlp_receiver)
    their_trace = secrets.token_hex(16)
    headers = {"Host": "orders.internal", "Authorization": f"Bearer {stack.etl_token()}",
               "X-Amzn-Trace-Id": "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
               "traceparent": f"00-{their_trace}-{secrets.token_hex(8)}-01"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as stranger:
        async with stranger.get(stack.base_url + "/v1/orders/7", headers=headers) as response:
            assert response.status == 200
    await stack.idgate.settled()
    [record] = await stack.decisions()
    received = stack.upstream.received[-1]
    assert received.header("x-amzn-trace-id") == []
    (traceparent,) = received.header("traceparent")
    assert traceparent.split("-")[1] == record["trace_id"]       # Envoy's own trace, continued by idgate


async def test_a_clients_traceparent_is_the_parent_of_neither_envoys_span_nor_idgates(make_envoy_stack, otlp_receiver,
                                                                                     mode):
    # The client picks a sampled trace id and parent span id: the shipped config must not let it choose the
    # trace Envoy's spans (and so idgate's, which trusts Envoy) belong to (issue 13).
    stack = await traced_envoy_stack(make_envoy_stack, otlp_receiver)
    their_trace, their_span = secrets.token_hex(16), secrets.token_hex(8)
    headers = {"traceparent": f"00-{their_trace}-{their_span}-01", "tracestate": "client=chosen",
               "X-Amzn-Trace-Id": f"Root=1-{their_trace[:8]}-{their_trace[8:]};Parent={their_span};Sampled=1"}
    response = await stack.get("/v1/orders/7", token=stack.etl_token(), headers=headers)
    assert response.status == 200
    await stack.idgate.settled()
    [record] = await stack.decisions()
    await stack.idgate.services.tracing.flush()
    assert record["trace_id"] != their_trace
    spans = await otlp_receiver.wait_for_trace(record["trace_id"], has_both, "Envoy's and idgate's spans")
    (ingress,) = [s for s in spans if s.service == "envoy" and s.kind == SERVER]
    assert ingress.parent_span_id == ""                  # a fresh trace: Envoy's ingress span has no parent
    ours = idgate_server(spans)
    assert ours.span_id == record["span_id"] and ours.parent_span_id != their_span
    parent = next(s for s in spans if s.span_id == ours.parent_span_id)
    assert parent.service == "envoy"                     # still one trace: Envoy, then idgate
    assert otlp_receiver.trace(their_trace) == []         # nobody's span joined the client's trace
    assert their_trace.encode() not in otlp_receiver.raw() and bytes.fromhex(their_trace) not in otlp_receiver.raw()
    received = stack.upstream.received[-1]
    (traceparent,) = received.header("traceparent")
    assert traceparent.split("-")[1] == record["trace_id"]   # the application joins the same, Envoy's, trace
    assert received.header("tracestate") == [] or "client=chosen" not in received.header("tracestate")[0]
    assert received.header("x-amzn-trace-id") == []
