"""Sealing from the reused encoder (chain.SealedBatch) is byte-identical to the sealing it replaced
(json.dumps per record, kept below as the reference), and chains written by either verify as one."""

from __future__ import annotations

import enum
import hashlib
import json
import math
import random
import string
from pathlib import Path
from typing import Any

import pytest

from proxy.audit import AuditLog, segment_files, verify_files
from proxy.audit.chain import ChainState, SealedBatch, canonical, format_ts, unsealed
from proxy.audit.retention import RetentionPlan
from proxy.aws.credentials import AwsCredentials, Vended
from proxy.cli import main as idgate
from proxy.config import AuditConfig
from proxy.core.errors import AuthenticationError, UpstreamError
from proxy.core.model import AccessRequest, Decision, Surface
from proxy.core.reasons import Reason
from proxy.metrics import Metrics
from proxy.pipeline import Pipeline, RejectedTarget, _aws_record, _decision_record, _rejection_record
from proxy.policy.session_policy import RoleChoice, SessionPolicy
from tests.factories import make_identity
from tests.unit.audit.test_audit import EPOCH, fixed_clock
from tests.unit.test_pipeline import Audit as Captured


def reference_canonical(record: dict[str, Any]) -> bytes:
    """The canonical form as it was spelled before sealing reused one encoder."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def reference_seal(fields: dict[str, Any], state: ChainState, epoch: float) -> tuple[bytes, ChainState]:
    """chain.seal as it was before sealing reused one encoder."""
    body = {**fields, "v": 1, "seq": state.seq + 1, "ts": format_ts(epoch), "prev": state.prev}
    c = reference_canonical(body)
    digest = hashlib.sha256(state.prev.encode("ascii") + c).hexdigest()
    line = b"%s,\"hash\":\"%s\"}\n" % (c[:-1], digest.encode("ascii"))
    return line, ChainState(state.seq + 1, digest)


def reference_chain(records: list[dict[str, Any]], state: ChainState, epoch: float) -> tuple[bytes, ChainState]:
    lines = []
    for fields in records:
        line, state = reference_seal(fields, state, epoch)
        lines.append(line)
    return b"".join(lines), state


def new_chain(records: list[dict[str, Any]], state: ChainState, epoch: float) -> tuple[bytes, ChainState]:
    batch = SealedBatch(state, epoch)
    for fields in records:
        batch.add(unsealed(fields))
    return batch.data(), batch.state


# --- record shapes the code builds ---------------------------------------------------------------

def real_records() -> list[dict[str, Any]]:
    """Decision, refusal, outcome, credential and retention records as idgate builds them, with values
    that are capped, escaped and non-ASCII."""
    identity = make_identity("svc-etl-7", groups=("data-eng", "ops"), client_id="etl",
                             claims={"jti": "jti-1", "tenant": "acme"})
    long_identity = make_identity("svc-" + "s" * 1000, groups=tuple(f"g{i}" for i in range(70)))
    request = AccessRequest(Surface.PROXY, "0f3c6a0e-6d1f-4d7e", "GET", "orders.internal", "/v1/orders/7", "127.0.0.1")
    odd = AccessRequest(Surface.FORWARD_AUTH, "r\u2028\"\\", "PØST", "h\u00e9st.internal", "/v1/" + "\"" * 900,
                        "::1")
    allow = Decision(True, "etl-read-orders", (Reason.MATCHED,), identity)
    deny = Decision(False, None, (Reason.NO_MATCHING_RULE,), long_identity)
    unauthenticated = Decision(False, None, (Reason.MISSING_TOKEN,), None)
    choice = RoleChoice("orders-reader", "arn:aws:iam::123456789012:role/orders-reader", ("r1", "r2"), (), (), True, False, None)
    policy = SessionPolicy.of({"Version": "2012-10-17", "Statement": []})
    vended = Vended(AwsCredentials("ASIAEXAMPLE", "secret", "token", EPOCH + 3600), "sts")
    records = [_decision_record(r, d) for r in (request, odd) for d in (allow, deny, unauthenticated)]
    records += [_aws_record(request, allow, "orders-reader", choice, policy, vended),
                _aws_record(odd, deny, None, None, None, None),
                _aws_record(request, deny, "x" * 300, choice, policy, None)]
    for target in (RejectedTarget(Surface.PROXY, "rid", "10.0.0.1", "GET", "orders.internal", "/a\\b"),
                   RejectedTarget(Surface.EXT_AUTHZ_HTTP, "\ud800", "\x00", "\U0001f600" * 40, "\xff" * 300, "/")):
        records.append(_rejection_record(target, AuthenticationError("no", reason=Reason.MISSING_TOKEN)))
    captured = Captured()
    pipeline = Pipeline(None, None, captured, Metrics())     # type: ignore[arg-type]   # only records outcomes
    pipeline.record_outcome(request, allow, status=200, bytes_in=0, bytes_out=1234, duration=0.001234)
    pipeline.record_failure(odd, allow, UpstreamError("down", reason=Reason.UPSTREAM_FAILED), bytes_in=7,
                            duration=12.5)
    records += captured.records
    plan = RetentionPlan((Path("audit.20261122T235959Z.000000000003.jsonl"),
                          Path("audit.20261122T235959Z.000000000009.jsonl")), ChainState(9, "a" * 64))
    records.append(plan.record())
    return records


# --- random records ------------------------------------------------------------------------------

# Keys that sort before, between and after the chain's members (prev, seq, ts, v), and next to them.
TOP_KEYS = ["a", "aws", "event", "pre", "prev_x", "prev0", "preW", "q", "se", "seq0", "seqz", "t", "trace",
            "ts0", "tsa", "u", "v0", "vv", "w", "zz", "A", "Prev", "SEQ", "V", "é", "\u00ff", "\u4e2d", "\U0001f600",
            "", " ", "\"", "\\", "\x7f", "\u2028"]
NESTED_KEYS = [*TOP_KEYS, "v", "seq", "ts", "prev", "hash"]      # reserved only at the top level
STRINGS = ["", "x", "\"", "\\", "/", "\n\r\t\b\f", "\x00\x1f", "\x7f", "é", "\u2028\u2029", "\ud800", "\udfff",
           "\U0001f600", "</script>", "\ufeff", "a" * 300]


def random_string(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(STRINGS)
    alphabet = string.printable + "é\u2028\ud83d\U0001f600\u4e2d\x00"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 4 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, -(2**63), 2**64 + 1, 10**40, -(10**30)]) + rng.randrange(-3, 4)
    if kind == 3:
        return rng.choice([0.0, -0.0, 0.1, 1e300, -1e-300, 5e-324, 1.7976931348623157e308, 123.456,
                           rng.uniform(-1e6, 1e6), rng.random()])
    if kind in (4, 5, 6):
        return random_string(rng)
    if kind in (7, 8):
        return {rng.choice(NESTED_KEYS) if rng.random() < 0.7 else random_string(rng): random_value(rng, depth + 1)
                for _ in range(rng.randrange(5))}
    return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]


def random_record(rng: random.Random) -> dict[str, Any]:
    record: dict[str, Any] = {"event": random_string(rng)}
    for _ in range(rng.randrange(8)):
        record[rng.choice(TOP_KEYS) if rng.random() < 0.8 else random_string(rng)] = random_value(rng)
    return {key: value for key, value in record.items() if key not in {"v", "seq", "ts", "prev", "hash"}}


# --- byte identity -------------------------------------------------------------------------------

def test_canonical_is_exactly_what_json_dumps_gives() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        record = random_record(rng)
        assert canonical(record) == reference_canonical(record)


def test_real_records_seal_byte_identically() -> None:
    records = real_records()
    assert {r["event"] for r in records} == {"decision", "outcome", "retention"}
    assert any("aws" in r for r in records)
    state = ChainState(41, hashlib.sha256(b"before").hexdigest())
    assert new_chain(records, state, EPOCH) == reference_chain(records, state, EPOCH)


@pytest.mark.parametrize("seed", range(5))
def test_thousands_of_random_records_seal_byte_identically(seed: int) -> None:
    rng = random.Random(seed)
    state = ChainState()
    for _ in range(200):                      # batches of 1..20 records, each with its own timestamp
        records = [random_record(rng) for _ in range(rng.randrange(1, 21))]
        epoch = EPOCH + rng.uniform(-1e6, 1e6)
        new, new_state = new_chain(records, state, epoch)
        assert (new, new_state) == reference_chain(records, state, epoch)
        state = new_state


@pytest.mark.parametrize("bad", [
    {"x": math.nan}, {"x": math.inf}, {"x": [-math.inf]}, {"x": object()}, {"x": {1: "a", "b": 2}},
    {"x": {(1, 2): "tuple key"}}, {1: "a non-str key beside the chain's members"}, {"x": b"bytes"},
], ids=repr)
def test_what_the_reference_refuses_is_refused_and_leaves_the_batch_unchanged(bad: dict[str, Any]) -> None:
    fields = {"event": "decision", **bad}
    with pytest.raises((TypeError, ValueError)) as refused:
        reference_seal(fields, ChainState(), EPOCH)
    batch = SealedBatch(ChainState(), EPOCH)
    batch.add(unsealed({"event": "decision", "i": 1}))
    with pytest.raises(type(refused.value)):
        batch.add(unsealed(fields))
    batch.add(unsealed({"event": "decision", "i": 2}))
    assert (batch.data(), batch.state) == reference_chain([{"event": "decision", "i": i} for i in (1, 2)],
                                                          ChainState(), EPOCH)


def test_a_cyclic_record_is_refused() -> None:
    cyclic: dict[str, Any] = {"event": "decision"}
    cyclic["self"] = cyclic
    with pytest.raises(RecursionError):
        SealedBatch(ChainState(), EPOCH).add(unsealed(cyclic))


async def test_the_audit_log_writes_the_reference_bytes(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    # The log takes only field names that sort before "ts" (the fixed tail of every line).
    randoms = ({k: v for k, v in random_record(random.Random(3)).items() if k < "ts"} for _ in range(300))
    records = [*real_records(), *randoms]
    log = AuditLog(AuditConfig(path=path, fsync=False), Metrics(), clock=fixed_clock)
    await log.open()
    for record in records:
        log.append_nowait(record)
    await log.flush()
    await log.close()
    assert path.read_bytes() == reference_chain(records, ChainState(), EPOCH)[0]


# --- old and new files verify as one chain -------------------------------------------------------

async def test_a_file_sealed_the_old_way_and_continued_by_the_new_writer_verifies_as_one_chain(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    old_records = real_records()
    data, _ = reference_chain(old_records, ChainState(), EPOCH - 60)
    path.write_bytes(data)
    log = AuditLog(AuditConfig(path=path, fsync=True, rotate_bytes=4096), Metrics(), clock=fixed_clock)
    await log.open()
    for record in real_records():
        await log.append(record)
    await log.close()

    files = segment_files(path)
    report = verify_files(files)
    assert report.ok, report.problems
    assert report.records == 2 * len(old_records) and len(files) > 1
    assert files[0].read_bytes().startswith(data)
    assert idgate(["audit", "verify", str(path)]) == 0
    assert "audit verify: ok" in capsys.readouterr().out


class _StrEnum(str, enum.Enum):
    A = "a"


class _IntEnum(enum.IntEnum):
    X = 3


class _OddFloat(float):
    def __repr__(self) -> str:
        return "not-a-number"


# From a red-team review of the reused encoder: values where a hand-rolled encoder would differ.
ADVERSARIAL = [
    {"a": 10 ** 4000}, {"a": -(10 ** 4299)}, {"a": "\ud800x\udfff\u2028\x00\x7f"}, {1: 2, 3: 4}, {None: 1},
    {True: 1, False: 2}, {1.5: 1, 2: 3}, {"a": {"hash": "0" * 64, "prev": "x", "seq": -1, "v": 2}},
    {"a": 1e16, "b": -0.0, "c": 5e-324, "d": 1.7976931348623157e308, "e": 1e-7},
    {"e": _StrEnum.A, "i": _IntEnum.X, "f": _OddFloat(1.5), _StrEnum.A: 1}, {"k": (1, 2), "l": [True, False, None, []]},
    {"deep": [[[[[[[[[[{"x": [{}]}]]]]]]]]]]},
]


@pytest.mark.parametrize("record", ADVERSARIAL)
def test_adversarial_values_are_byte_identical(record: dict[str, Any]) -> None:
    assert canonical(record) == reference_canonical(record)


@pytest.mark.parametrize("record", [{"a": float("nan")}, {"a": float("inf")}, {"a": -float("inf")},
                                    {"a": object()}, {(1,): 1}, {"a": 10 ** 5000}, {1: 1, "a": 2}, {"a": b"x"}])
def test_what_json_dumps_refuses_is_refused_alike(record: dict[str, Any]) -> None:
    with pytest.raises((TypeError, ValueError)) as old:
        reference_canonical(record)
    with pytest.raises(old.type):
        canonical(record)
