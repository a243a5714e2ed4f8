"""Traces tied to identity, end to end: idgate exporting over OTLP/HTTP to a real receiver (oteltest's sink,
its own process), one server span per request on every surface with its children, the caller as a pseudonym,
the decision on the span, the trace and span ids on the audit records and in the upstream's traceparent;
trace context believed from trusted peers only; a dead collector costs requests nothing."""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import Any

import pytest
from multidict import CIMultiDict

from tests.harness.otlp import OtlpReceiver, ReceivedSpan
from tests.harness.processes import HOST, eventually
from tests.harness.servers import refused_port
from tests.harness.stack import Stack

SERVER, CLIENT = 2, 3                         # opentelemetry.proto.trace.v1.Span.SpanKind


def foreign() -> tuple[str, str, str]:
    """A trace context from elsewhere: trace id, span id, traceparent (new per test: the receiver is shared)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


async def traced_stack(make_stack: Any, receiver: OtlpReceiver, tracing: dict[str, Any] | None = None,
                       **config: Any) -> Stack:
    stack: Stack = await make_stack(tracing={"endpoint": receiver.endpoint, **(tracing or {})}, **config)
    return stack


async def request_trace(stack: Stack, receiver: OtlpReceiver, event: str = "decision",
                        names: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[ReceivedSpan]]:
    """The last audit record of `event` and its trace's spans, once the server span and `names` arrived."""
    await stack.idgate.settled()
    record = [r for r in await stack.idgate.audit_records() if r["event"] == event][-1]
    await stack.idgate.services.tracing.flush()
    spans = await receiver.wait_for_trace(
        record["trace_id"], lambda found: {s.name for s in found if s.kind == SERVER or s.name in names}
        >= {*names} and any(s.kind == SERVER for s in found), "the request's spans exported")
    return record, spans


def server_span(spans: list[ReceivedSpan]) -> ReceivedSpan:
    (found,) = [s for s in spans if s.kind == SERVER]
    return found


def named(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    (found,) = [s for s in spans if s.name == name]
    return found


CHILDREN = ("idgate.token.verify", "idgate.authorize", "idgate.audit.append", "idgate.upstream")


async def test_a_proxied_request_is_one_trace_tied_to_its_identity_rule_and_audit_record(make_stack, otlp_receiver):
    stack = await traced_stack(make_stack, otlp_receiver)
    response = await stack.get("/v1/orders/7", token=stack.etl_token())
    assert response.status == 200
    record, spans = await request_trace(stack, otlp_receiver, names=CHILDREN)
    server = server_span(spans)
    assert server.parent_span_id == "" and server.service == "idgate" and server.name == "GET proxy"
    assert record["span_id"] == server.span_id
    assert {named(spans, name).parent_span_id for name in CHILDREN} == {server.span_id}
    assert named(spans, "idgate.upstream").kind == CLIENT
    attributes = server.attributes
    assert re.fullmatch(r"[0-9a-f]{32}", attributes["enduser.pseudo.id"])
    assert "enduser.id" not in attributes
    assert attributes["user.roles"] == ("data-eng",)
    assert (attributes["idgate.rule"], attributes["idgate.decision"], attributes["idgate.reason"]) == \
        ("etl-read-orders", "allow", "matched")
    assert attributes["idgate.audit.seq"] == record["seq"] == named(spans, "idgate.audit.append").attributes["idgate.audit.seq"]
    assert (attributes["http.request.method"], attributes["url.path"], attributes["server.address"],
            attributes["http.response.status_code"]) == ("GET", "/v1/orders/7", "orders.internal", 200)
    assert named(spans, "idgate.token.verify").attributes["idgate.token.cache"] == "miss"
    # The outcome record is the same request's; the upstream's spans would be children of idgate's forward.
    outcome = [r for r in await stack.idgate.audit_records() if r["event"] == "outcome"][-1]
    assert (outcome["trace_id"], outcome["span_id"]) == (record["trace_id"], record["span_id"])
    (traceparent,) = stack.upstream.received[-1].header("traceparent")
    assert traceparent == f"00-{record['trace_id']}-{named(spans, 'idgate.upstream').span_id}-01"


async def test_a_second_request_with_the_same_token_is_a_cache_hit(make_stack, otlp_receiver):
    stack = await traced_stack(make_stack, otlp_receiver)
    token = stack.etl_token()
    assert (await stack.get("/v1/orders/7", token=token)).status == 200
    assert (await stack.get("/v1/orders/8", token=token)).status == 200
    _, spans = await request_trace(stack, otlp_receiver, names=("idgate.token.verify",))
    assert named(spans, "idgate.token.verify").attributes["idgate.token.cache"] == "hit"


async def test_a_denied_request_carries_its_reason_and_a_refusal_too(make_stack, otlp_receiver):
    stack = await traced_stack(make_stack, otlp_receiver)
    assert (await stack.get("/v1/orders/7", token=stack.web_token())).status == 403
    record, spans = await request_trace(stack, otlp_receiver, names=("idgate.authorize",))
    server = server_span(spans)
    assert (server.attributes["idgate.decision"], server.attributes["idgate.reason"]) == ("deny", record["reasons"][0])
    assert server.attributes["http.response.status_code"] == 403 and server.status == 0   # a 4xx is not an error
    assert named(spans, "idgate.authorize").attributes["idgate.decision"] == "deny"
    assert (await stack.get("/v1/orders%2F7", token=stack.etl_token())).status == 400
    record, spans = await request_trace(stack, otlp_receiver)
    assert server_span(spans).attributes["idgate.reason"] == record["reasons"][0] == "encoded_slash"


async def test_no_token_and_no_claim_value_reaches_the_collector(make_stack, otlp_receiver):
    stack = await traced_stack(make_stack, otlp_receiver)
    secret_email = "someone.secret@example.test"
    token = stack.issuer.token("svc-etl-7", ("data-eng",), tenant="acme", email=secret_email)
    assert (await stack.get("/v1/orders/7", token=token)).status == 200
    record, _ = await request_trace(stack, otlp_receiver, names=CHILDREN)
    exported = otlp_receiver.raw()
    assert bytes.fromhex(record["trace_id"]) in exported          # the bytes searched do hold this trace
    for value in (token, *token.split("."), "svc-etl-7", secret_email, "acme", stack.issuer.issuer.issuer_url):
        assert value.encode() not in exported, value


async def test_enduser_id_is_exported_only_when_configured(make_stack, otlp_receiver):
    stack = await traced_stack(make_stack, otlp_receiver, {"export_enduser_id": True, "max_roles": 0})
    assert (await stack.get("/v1/orders/7", token=stack.etl_token())).status == 200
    _, spans = await request_trace(stack, otlp_receiver)
    attributes = server_span(spans).attributes
    assert attributes["enduser.id"] == "svc-etl-7" and "user.roles" not in attributes


async def test_an_untrusted_peers_trace_context_starts_a_new_trace_and_its_baggage_stops_here(make_stack, otlp_receiver):
    their_trace, their_span, their_parent = foreign()
    stack = await traced_stack(make_stack, otlp_receiver)      # no trusted proxies: the client is a stranger
    headers = {"traceparent": their_parent, "tracestate": "vendor=abc", "baggage": "user.id=admin"}
    assert (await stack.get("/v1/orders/7", token=stack.etl_token(), headers=headers)).status == 200
    record, spans = await request_trace(stack, otlp_receiver)
    assert record["trace_id"] != their_trace and server_span(spans).parent_span_id == ""
    received = stack.upstream.received[-1]
    assert received.header("baggage") == [] and received.header("tracestate") == []
    assert received.header("traceparent")[0].startswith(f"00-{record['trace_id']}-")


async def test_a_trusted_peers_trace_context_is_continued_and_passed_on(make_stack, otlp_receiver):
    their_trace, their_span, their_parent = foreign()
    stack = await traced_stack(make_stack, otlp_receiver, trusted_proxies=[f"{HOST}/32"])
    headers = {"traceparent": their_parent, "tracestate": "vendor=abc", "baggage": "tenant=acme"}
    assert (await stack.get("/v1/orders/7", token=stack.etl_token(), headers=headers)).status == 200
    record, spans = await request_trace(stack, otlp_receiver)
    assert record["trace_id"] == their_trace and server_span(spans).parent_span_id == their_span
    received = stack.upstream.received[-1]
    assert received.header("baggage") == ["tenant=acme"] and received.header("tracestate") == ["vendor=abc"]
    (traceparent,) = received.header("traceparent")
    assert traceparent.startswith(f"00-{their_trace}-") and their_span not in traceparent


@pytest.mark.parametrize("spoil", [
    lambda parent: [parent, parent],                               # more than one: invalid (W3C)
    lambda parent: [parent.upper()], lambda parent: [parent + "-extra"], lambda parent: ["ff" + parent[2:]],
    lambda parent: [parent[:3] + "0" * 32 + parent[35:]], lambda parent: [parent + "x" * 8000],
], ids=["twice", "upper-case", "trailing", "version-ff", "zero-trace-id", "oversized"])
async def test_a_malformed_trace_context_from_a_trusted_peer_starts_a_new_trace(make_stack, otlp_receiver, spoil):
    stack = await traced_stack(make_stack, otlp_receiver, trusted_proxies=[f"{HOST}/32"])
    their_trace, _, parent = foreign()
    traceparent = spoil(parent)
    headers = CIMultiDict([("Host", "orders.internal"), ("Authorization", f"Bearer {stack.etl_token()}"),
                           *(("traceparent", value) for value in traceparent)])
    assert (await stack.http.get(stack.base_url + "/v1/orders/7", headers=headers)).status == 200
    record, spans = await request_trace(stack, otlp_receiver)
    assert record["trace_id"] != their_trace and server_span(spans).parent_span_id == ""


async def test_tracing_trusted_peers_narrows_whose_trace_context_counts(make_stack, otlp_receiver):
    their_trace, their_span, their_parent = foreign()
    stack = await traced_stack(make_stack, otlp_receiver, {"trusted_peers": []}, trusted_proxies=[f"{HOST}/32"])
    headers = {"traceparent": their_parent, "baggage": "user.id=admin"}
    assert (await stack.get("/v1/orders/7", token=stack.etl_token(), headers=headers)).status == 200
    record, _ = await request_trace(stack, otlp_receiver)
    assert record["trace_id"] != their_trace and stack.upstream.received[-1].header("baggage") == []


async def test_forward_auth_and_ext_authz_http_have_their_server_spans(make_stack, otlp_receiver):
    their_trace, their_span, their_parent = foreign()
    stack = await traced_stack(make_stack, otlp_receiver, trusted_proxies=[f"{HOST}/32"], ext_authz={"http": {}})
    token = stack.etl_token()
    auth = {"X-Original-Method": "GET", "X-Original-URI": "/v1/orders/7", "X-Forwarded-Host": "orders.internal",
            "traceparent": their_parent}
    assert (await stack.get("/.idgate/auth", token=token, headers=auth)).status == 200
    record, spans = await request_trace(stack, otlp_receiver, names=("idgate.authorize",))
    assert (record["surface"], record["trace_id"]) == ("forward_auth", their_trace)
    assert server_span(spans).attributes["idgate.rule"] == "etl-read-orders"
    assert (await stack.get("/.idgate/ext_authz/v1/orders/7", token=token)).status == 200
    record, spans = await request_trace(stack, otlp_receiver, names=("idgate.authorize",))
    assert record["surface"] == "ext_authz_http"
    assert server_span(spans).attributes["idgate.surface"] == "ext_authz_http"


async def test_sampled_out_requests_export_nothing_but_keep_their_ids(make_stack, otlp_receiver):
    stack = await traced_stack(make_stack, otlp_receiver, {"sampling_ratio": 0.0})
    assert (await stack.get("/v1/orders/7", token=stack.etl_token())).status == 200
    await stack.idgate.settled()
    await stack.idgate.services.tracing.flush()
    record = (await stack.decisions())[-1]
    assert re.fullmatch(r"[0-9a-f]{32}", record["trace_id"]) and otlp_receiver.trace(record["trace_id"]) == []
    (traceparent,) = stack.upstream.received[-1].header("traceparent")
    assert traceparent == f"00-{record['trace_id']}-{record['span_id']}-00"


async def test_a_dead_collector_neither_fails_nor_holds_up_requests_and_the_loss_is_counted(make_stack):
    with refused_port() as dead:
        stack = await make_stack(tracing={"endpoint": f"http://{HOST}:{dead}/v1/traces", "max_queue_size": 8,
                                          "export_timeout": 1})
        token = stack.etl_token()
        for _ in range(40):
            assert (await stack.get("/v1/orders/7", token=token)).status == 200
        metrics = stack.idgate.services.metrics

        def lost() -> float:
            return sum(metrics.trace_spans_dropped.labels(reason)._value.get() for reason in ("queue_full", "export_failed"))

        await eventually(lambda: lost() > 0, "spans counted as lost")
        assert metrics.trace_spans_exported._value.get() == 0
        async with stack.http.get(stack.idgate.admin_url + "/metrics") as scraped:
            assert "idgate_trace_spans_dropped_total" in await scraped.text()


async def test_without_a_tracing_section_audit_records_carry_no_trace_ids(stack):
    their_trace, their_span, their_parent = foreign()
    assert (await stack.get("/v1/orders/7", token=stack.etl_token(), headers={"traceparent": their_parent})).status == 200
    record = (await stack.decisions())[-1]
    assert "trace_id" not in record and "span_id" not in record
    assert stack.upstream.received[-1].header("traceparent") == []      # a stranger's, with tracing off too


async def test_a_websocket_upgrade_is_traced_and_the_upstream_gets_its_traceparent(make_stack, otlp_receiver):
    stack = await traced_stack(make_stack, otlp_receiver, orders_route={"websocket": True})
    async with stack.http.ws_connect(stack.idgate.url + "/v1/orders/stream", headers={
            "Host": "orders.internal", "Authorization": f"Bearer {stack.etl_token()}", "baggage": "user.id=admin"}) as ws:
        await ws.send_str("hi")
        assert (await asyncio.wait_for(ws.receive(), timeout=5)).data == "echo:hi"
    record, spans = await request_trace(stack, otlp_receiver, event="outcome", names=("idgate.upstream",))
    received = stack.upstream.received[-1]
    (traceparent,) = received.header("traceparent")
    assert traceparent == f"00-{record['trace_id']}-{named(spans, 'idgate.upstream').span_id}-01"
    assert received.header("baggage") == []
