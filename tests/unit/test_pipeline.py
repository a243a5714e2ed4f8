"""The pipeline's audit records (proxy.pipeline): every value a client or a token chose is capped
(proxy.core.caps) in each record builder, and only a verified identity is ever recorded."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.core import caps
from proxy.core.errors import AuthenticationError, BadRequest
from proxy.core.model import AccessRequest, Decision, Identity, Surface
from proxy.core.reasons import Reason
from proxy.metrics import Metrics
from proxy.pipeline import Pipeline, RejectedTarget, _aws_record
from tests.factories import make_identity

LONG = "x" * 5000


class Audit:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def append(self, record: dict[str, Any]) -> int:
        self.records.append(record)
        return len(self.records)

    def append_nowait(self, record: dict[str, Any]) -> None:
        self.records.append(record)


class Verifier:
    def __init__(self, identity: Identity | None) -> None:
        self.identity = identity

    async def verify(self, token: str) -> Identity:
        if self.identity is None:
            raise AuthenticationError("bad signature", reason=Reason.BAD_SIGNATURE)
        return self.identity


class AllowAll:
    def decide_http(self, identity: Identity, method: str, host: str, path: str) -> Decision:
        return Decision(True, "r1", (Reason.MATCHED,), identity)


class Policy:
    current = AllowAll()


def pipeline(identity: Identity | None = None) -> tuple[Pipeline, Audit]:
    audit = Audit()
    return Pipeline(Verifier(identity), Policy(), audit, Metrics()), audit   # type: ignore[arg-type]


def access(path: str = "/v1/orders/7", **fields: Any) -> AccessRequest:
    values: dict[str, Any] = {"surface": Surface.PROXY, "request_id": "idg-000000000001", "method": "GET",
                              "host": "orders.internal", "path": path, "client_addr": "127.0.0.1", **fields}
    return AccessRequest(**values)


def is_capped(value: Any, original: str) -> bool:
    return isinstance(value, dict) and value["capped"] is True and value["chars"] == len(original)


async def test_a_verified_identitys_claims_are_capped_in_its_decision_record() -> None:
    groups = tuple(f"group-{i}-{'g' * 200}" for i in range(100))
    identity = make_identity(LONG, issuer="https://issuer.test/" + LONG, groups=groups, client_id=LONG)
    pipe, audit = pipeline(identity)
    await pipe.authorize(access(path="/v1/orders/" + LONG), "token")
    [record] = audit.records
    view = record["identity"]
    assert all(is_capped(view[name], value) for name, value in
               (("iss", identity.issuer), ("sub", LONG), ("client_id", LONG)))
    assert view["groups"]["count"] == 100 and len(view["groups"]["first"]) == caps.GROUPS
    assert all(is_capped(g, groups[i]) for i, g in enumerate(view["groups"]["first"]))
    assert is_capped(record["target"]["path"], "/v1/orders/" + LONG)
    assert len(json.dumps(record)) < 40_000


async def test_an_ordinary_identity_is_recorded_exactly() -> None:
    identity = make_identity("svc-etl-7", groups=("data-eng", "web"), client_id="airflow")
    pipe, audit = pipeline(identity)
    await pipe.authorize(access(), "token")
    assert audit.records[0]["identity"] == {"iss": identity.issuer, "sub": "svc-etl-7", "client_id": "airflow",
                                            "groups": ["data-eng", "web"]}
    assert audit.records[0]["target"] == {"method": "GET", "host": "orders.internal", "path": "/v1/orders/7"}


async def test_an_unverified_token_leaves_no_identity_in_its_record() -> None:
    pipe, audit = pipeline(None)
    with pytest.raises(AuthenticationError):
        await pipe.authorize(access(), "forged.token.value")
    assert audit.records[0]["identity"] is None and audit.records[0]["reasons"] == ["bad_signature"]


async def test_every_field_of_a_refused_request_is_capped() -> None:
    pipe, audit = pipeline()
    target = RejectedTarget(Surface.EXT_AUTHZ_GRPC, "r" * 500, "a" * 500, "M" * 500, "h" * 500, "/" + LONG)
    await pipe.refuse(target, BadRequest("invalid method", reason=Reason.BAD_METHOD))
    [record] = audit.records
    assert is_capped(record["request_id"], "r" * 500) and is_capped(record["client"]["addr"], "a" * 500)
    assert all(is_capped(record["target"][name], value) for name, value in
               (("method", "M" * 500), ("host", "h" * 500), ("raw_path", "/" + LONG)))
    assert len(json.dumps(record)) < 2048


async def test_a_credential_record_caps_the_requested_role_and_the_token_id() -> None:
    identity = make_identity(claims={"jti": "j" * 300})
    decision = Decision(False, None, (Reason.ROLE_NOT_GRANTED,), identity)
    record = _aws_record(access(surface=Surface.CREDENTIALS), decision, "role/" + "r" * 590, None, None, None)
    assert is_capped(record["target"]["role"], "role/" + "r" * 590)
    assert is_capped(record["aws"]["token_jti"], "j" * 300)
    ordinary = Decision(False, None, (Reason.ROLE_NOT_GRANTED,), make_identity(claims={"jti": "abc"}))
    short = _aws_record(access(), ordinary, "etl", None, None, None)
    assert short["target"]["role"] == "etl" and short["aws"]["token_jti"] == "abc"


async def test_an_outcome_record_caps_its_request_id() -> None:
    pipe, audit = pipeline()
    decision = Decision(True, "r1", (Reason.MATCHED,), make_identity())
    pipe.record_outcome(access(request_id="r" * 500), decision, status=200, bytes_in=0, bytes_out=0, duration=0.0)
    assert is_capped(audit.records[0]["request_id"], "r" * 500)
