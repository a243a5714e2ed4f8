"""The server span and its children on the surfaces that act otherwise than by proxying: Envoy's gRPC
ext_authz (idgate's own HTTP/2 server, trace context from the call's metadata), the credential broker (the
STS call) and the DynamoDB gateway (signature, decision, the DynamoDB call), exported to the real receiver."""

from __future__ import annotations

import json
import secrets

import grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from tests.harness.gateway import create_tables
from tests.harness.otlp import ReceivedSpan
from tests.harness.processes import HOST

SERVER, CLIENT = 2, 3
CHECK = "/envoy.service.auth.v3.Authorization/Check"
OWN_KEY = json.dumps({"TableName": "orders", "Key": {"pk": {"S": "acme"}, "sk": {"S": "1"}}}).encode()


def by_name(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {span.name: span for span in spans}


def complete(*names: str):
    return lambda spans: {*names} <= {span.name for span in spans}


async def test_a_grpc_check_continues_envoys_trace_from_the_call_metadata(make_stack, otlp_receiver):
    stack = await make_stack(trusted_proxies=[f"{HOST}/32"], ext_authz={"grpc": {"host": HOST, "port": 0}},
                             tracing={"endpoint": otlp_receiver.endpoint})
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    request = CheckRequest()
    http = request.attributes.request.http
    http.method, http.host, http.path = "GET", "orders.internal", "/v1/orders/7"
    http.headers["authorization"] = f"Bearer {stack.etl_token()}"
    async with grpc.aio.insecure_channel(f"{HOST}:{stack.idgate.listeners.grpc_port}") as channel:
        raw = await channel.unary_unary(CHECK)(request.SerializeToString(), timeout=10,
                                               metadata=(("traceparent", f"00-{trace_id}-{span_id}-01"),))
    assert CheckResponse.FromString(raw).status.code == 0
    await stack.idgate.settled()
    [record] = await stack.decisions()
    assert record["trace_id"] == trace_id
    await stack.idgate.services.tracing.flush()
    spans = by_name(await otlp_receiver.wait_for_trace(trace_id, complete(
        "envoy.service.auth.v3.Authorization/Check", "idgate.authorize", "idgate.audit.append"), "the check's spans"))
    server = spans["envoy.service.auth.v3.Authorization/Check"]
    assert (server.kind, server.parent_span_id, server.span_id) == (SERVER, span_id, record["span_id"])
    assert server.attributes["rpc.system"] == "grpc" and server.attributes["idgate.rule"] == "etl-read-orders"
    assert server.attributes["url.path"] == "/v1/orders/7" and server.attributes["http.response.status_code"] == 200
    assert spans["idgate.authorize"].parent_span_id == server.span_id


async def test_the_credential_broker_traces_its_sts_call_and_never_the_secret(make_broker_stack, otlp_receiver):
    stack = await make_broker_stack(tracing={"endpoint": otlp_receiver.endpoint})
    token = stack.op_token("svc-report")
    answer = await stack.fetch(token)
    assert answer.status == 200, answer.text
    await stack.settled()
    [record] = await stack.credential_decisions()
    await stack.idgate.services.tracing.flush()
    spans = by_name(await otlp_receiver.wait_for_trace(record["trace_id"], complete(
        "GET credentials", "idgate.token.verify", "idgate.authorize", "idgate.sts", "idgate.audit.append"),
        "the vend's spans"))
    server, sts = spans["GET credentials"], spans["idgate.sts"]
    assert server.attributes["idgate.rule"] == "reports-read" and server.attributes["idgate.decision"] == "allow"
    assert (sts.kind, sts.parent_span_id, sts.attributes["idgate.credentials.source"]) == (CLIENT, server.span_id, "sts")
    exported = otlp_receiver.raw()
    for secret in (token, answer.body["SecretAccessKey"], answer.body["Token"], "svc-report"):
        assert secret.encode() not in exported


async def test_the_dynamodb_gateway_traces_the_signature_the_decision_and_the_call(make_gateway_stack, moto,
                                                                                   otlp_receiver):
    stack = await make_gateway_stack(tracing={"endpoint": otlp_receiver.endpoint})
    for role in ("tenant", "ops"):
        moto.create_role(role)
    create_tables(moto)
    credentials = await stack.vend("svc-etl-acme", tenant="acme")
    status, answer = await stack.call(credentials, OWN_KEY)
    assert status == 200, answer
    await stack.idgate.settled()
    record = [r for r in await stack.records() if r["event"] == "decision"][-1]
    await stack.idgate.services.tracing.flush()
    spans = by_name(await otlp_receiver.wait_for_trace(record["trace_id"], complete(
        "POST dynamodb", "idgate.authenticate", "idgate.authorize", "idgate.sts", "idgate.audit.append",
        "idgate.dynamodb"), "the call's spans"))
    server, call = spans["POST dynamodb"], spans["idgate.dynamodb"]
    assert server.span_id == record["span_id"] and server.attributes["idgate.rule"] == record["rule"]
    assert (call.kind, call.parent_span_id, call.attributes["rpc.method"]) == (CLIENT, server.span_id, "GetItem")
    assert spans["idgate.sts"].parent_span_id == spans["idgate.authorize"].span_id
    assert credentials.secret_access_key.encode() not in otlp_receiver.raw()
