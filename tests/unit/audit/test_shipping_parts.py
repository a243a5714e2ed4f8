"""The pure parts of audit shipping: PutLogEvents batching and its refusals, the fast link check of a
segment, the tail's positions across rotation, signed anchors and their chain, the state files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.audit.anchors import AnchorError, AnchorSigner, anchor_chain_problems, public_keys, read_anchor, record_problems
from proxy.audit.chain import GENESIS, ChainState, SealedBatch, follows, unsealed
from proxy.audit.cloudwatch import (
    EVENT_OVERHEAD, MAX_AHEAD_MS, MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_EVENT_BYTES, MAX_SPAN_MS, Rejected, _events_body, plan_batches,
    rejected_ranges,
)
from proxy.audit.s3_sink import check_segment
from proxy.audit.ship_state import load_ship_state
from proxy.audit.sink import rotated_path
from proxy.audit.state import StateError, read_state, write_state
from proxy.audit.tail import ChainBreak, ChainTail, Position, TailRecord

EPOCH = 1_764_633_600.0          # 2025-12-02T00:00:00Z
NOW_MS = 10 ** 13                # far after every stamp below: the floor's cap stays out of the way


def record(seq: int, stamp: int, size: int = 100) -> TailRecord:
    return TailRecord(b"x" * size, "audit.jsonl", seq * size, seq, "0" * 64, stamp)


def sealed_lines(count: int, epoch: float = EPOCH, state: ChainState = ChainState()) -> tuple[list[bytes], ChainState]:
    batch = SealedBatch(state, epoch)
    for i in range(count):
        batch.add(unsealed({"event": "decision", "i": i}, "node-1"))
    return batch.data().split(b"\n")[:-1], batch.state


# --- PutLogEvents batches ------------------------------------------------------------------------

def test_timestamps_never_go_back_within_or_across_batches() -> None:
    batches, _ = plan_batches([record(1, 5000), record(2, 4000), record(3, 6000)], 5500, NOW_MS)
    (batch,) = batches
    assert batch.timestamps == (5500, 5500, 6000)


def test_a_clock_that_ran_fast_holds_the_floor_at_most_110_minutes_ahead() -> None:
    """The records written while the clock ran 3 h fast set the floor; later ones are stamped at most
    110 minutes ahead of now (CloudWatch takes up to 2 h ahead) instead of all being refused."""
    now = 1_000_000_000_000
    batches, _ = plan_batches([record(2, now + 1000)], now + 3 * 3600 * 1000, now)
    assert batches[0].timestamps == (now + MAX_AHEAD_MS,)


def test_a_batch_holds_at_most_10000_events() -> None:
    batches, _ = plan_batches([record(i, 1000, size=10) for i in range(1, MAX_BATCH_EVENTS + 2)], 0, NOW_MS)
    assert [len(b.records) for b in batches] == [MAX_BATCH_EVENTS, 1]


def test_a_batch_holds_at_most_1048576_bytes_counting_26_per_event() -> None:
    size = 100_000
    per_batch = MAX_BATCH_BYTES // (size + EVENT_OVERHEAD)
    batches, _ = plan_batches([record(i, 1000, size=size) for i in range(1, 2 * per_batch + 1)], 0, NOW_MS)
    assert [len(b.records) for b in batches] == [per_batch, per_batch]
    assert all(sum(len(r.line) + EVENT_OVERHEAD for r in b.records) <= MAX_BATCH_BYTES for b in batches)


def test_a_batch_spans_at_most_24_hours() -> None:
    batches, _ = plan_batches([record(1, 0), record(2, MAX_SPAN_MS), record(3, MAX_SPAN_MS + 1)], 0, NOW_MS)
    assert [[r.seq for r in b.records] for b in batches] == [[1, 2], [3]]


def test_a_record_too_large_for_an_event_is_set_aside_not_sent() -> None:
    batches, too_large = plan_batches([record(1, 0), record(2, 0, size=MAX_EVENT_BYTES + 1), record(3, 0)], 0, NOW_MS)
    assert [r.seq for b in batches for r in b.records] == [1, 3]
    assert [r.seq for r in too_large] == [2]


def test_rejected_event_info_becomes_ranges_of_the_batch() -> None:
    assert rejected_ranges({"tooOldLogEventEndIndex": 2, "tooNewLogEventStartIndex": 8}, 10) == [
        Rejected(0, 2, "too_old"), Rejected(8, 9, "too_new")]
    assert rejected_ranges({"expiredLogEventEndIndex": 0}, 3) == [Rejected(0, 0, "expired")]
    # Indexes outside the batch (a confused answer) are not taken as refusals of events that were never sent.
    assert rejected_ranges({"tooOldLogEventEndIndex": 5, "tooNewLogEventStartIndex": -1}, 3) == []


# --- the fast link check -------------------------------------------------------------------------

def test_follows_accepts_exactly_the_next_record() -> None:
    lines, _ = sealed_lines(3)
    first = json.loads(lines[0])["hash"]
    assert follows(lines[1], first) == json.loads(lines[1])["hash"]
    assert follows(lines[1], GENESIS) is None                       # not what follows the genesis
    assert follows(lines[2], first) is None                         # a record skipped


@pytest.mark.parametrize("edit", [
    lambda line: line.replace(b'"i":1', b'"i":7'),                # content edited, hash kept
    lambda line: line[:-3] + (b"0" if line[-3:-2] != b"0" else b"1") + line[-2:],   # hash edited
    lambda line: line + b" ",                                       # trailing bytes
    lambda line: line[:-1],                                         # the closing brace cut
])
def test_follows_refuses_an_edited_line(edit: object) -> None:
    lines, _ = sealed_lines(2)
    first = json.loads(lines[0])["hash"]
    assert follows(edit(lines[1]), first) is None                   # type: ignore[operator]


def test_a_rotated_segment_is_checked_end_to_end_and_against_where_the_sink_stands(tmp_path: Path) -> None:
    lines, state = sealed_lines(5)
    path = rotated_path(tmp_path / "audit.jsonl", EPOCH, 5)
    path.write_bytes(b"\n".join(lines) + b"\n")
    checked = check_segment(path, None)
    assert (checked.first, checked.last) == (1, state)
    more, _ = sealed_lines(2, state=state)
    later = rotated_path(tmp_path / "audit.jsonl", EPOCH + 1, 7)
    later.write_bytes(b"\n".join(more) + b"\n")
    assert check_segment(later, state).first == 6
    with pytest.raises(ChainBreak, match="does not follow the last shipped"):
        check_segment(later, ChainState(4, json.loads(lines[3])["hash"]))
    edited = lines[:]
    edited[2] = edited[2].replace(b'"i":2', b'"i":9')
    path.write_bytes(b"\n".join(edited) + b"\n")
    with pytest.raises(ChainBreak, match="after seq 2"):
        check_segment(path, None)
    path.write_bytes(b"\n".join(lines[:4]) + b"\n")                 # the name says 5
    with pytest.raises(ChainBreak, match="not the seq its name says"):
        check_segment(path, None)


# --- the tail ------------------------------------------------------------------------------------

def test_the_tail_finds_its_position_after_the_live_file_rotated(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    lines, state = sealed_lines(6)
    audit.write_bytes(b"\n".join(lines) + b"\n")
    tail = ChainTail(audit)
    first = tail.read(None, 3, max_records=100, max_bytes=1 << 20)
    assert [r.seq for r in first] == [1, 2, 3]
    assert first[-1].position.segment == "audit.jsonl"
    # Rotation renames the live file aside; new records go to a new live file.
    audit.rename(rotated_path(audit, EPOCH, 6))
    more, _ = sealed_lines(2, state=state)
    audit.write_bytes(b"\n".join(more) + b"\n")
    rest = tail.read(first[-1].position, 8, max_records=100, max_bytes=1 << 20)
    assert [r.seq for r in rest] == [4, 5, 6, 7, 8]
    assert [r.line for r in first + rest] == lines + more


def test_a_wrong_offset_is_not_trusted_and_a_missing_position_is_a_chain_break(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    lines, _ = sealed_lines(4)
    audit.write_bytes(b"\n".join(lines) + b"\n")
    tail = ChainTail(audit)
    second = tail.read(None, 2, max_records=100, max_bytes=1 << 20)[-1].position
    moved = Position(second.segment, second.offset + 7, second.seq, second.hash)
    assert [r.seq for r in tail.read(moved, 4, max_records=100, max_bytes=1 << 20)] == [3, 4]
    gone = Position("audit.jsonl", second.offset, 2, "f" * 64)
    with pytest.raises(ChainBreak, match="not in the local chain"):
        tail.read(gone, 4, max_records=100, max_bytes=1 << 20)


def test_the_tail_stops_at_the_durable_seq_and_before_an_unterminated_line(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    lines, _ = sealed_lines(4)
    audit.write_bytes(b"\n".join(lines[:3]) + b"\n" + lines[3][:20])
    tail = ChainTail(audit)
    assert [r.seq for r in tail.read(None, 2, max_records=100, max_bytes=1 << 20)] == [1, 2]
    assert [r.seq for r in tail.read(None, 4, max_records=100, max_bytes=1 << 20)] == [1, 2, 3]


@pytest.mark.parametrize("raw", [b"\t", b"\x7f", b"\xc3\xa9", b"\r"])
def test_the_tail_refuses_a_line_with_bytes_the_canonical_encoding_never_writes(tmp_path: Path, raw: bytes) -> None:
    """Such a line may hash right (whoever rewrote the file can recompute the chain), but the sinks get
    exactly the bytes read, and these would not be JSON: it stops shipping instead."""
    audit = tmp_path / "audit.jsonl"
    lines, _ = sealed_lines(2)
    audit.write_bytes(lines[0] + b"\n" + lines[1].replace(b'"event"', b'"ev' + raw + b'ent"') + b"\n")
    with pytest.raises(ChainBreak, match="control or non-ASCII"):
        ChainTail(audit).read(None, 2, max_records=100, max_bytes=1 << 20)


def test_the_tail_refuses_an_edited_or_reordered_record(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    lines, _ = sealed_lines(3)
    audit.write_bytes(b"\n".join([lines[0], lines[2], lines[1]]) + b"\n")
    with pytest.raises(ChainBreak, match="does not follow seq 1"):
        ChainTail(audit).read(None, 3, max_records=100, max_bytes=1 << 20)
    audit.write_bytes(b"\n".join([lines[0], lines[1].replace(b'"i":1', b'"i":5'), lines[2]]) + b"\n")
    with pytest.raises(ChainBreak, match="hash mismatch"):
        ChainTail(audit).read(None, 3, max_records=100, max_bytes=1 << 20)


# --- anchors -------------------------------------------------------------------------------------

def signer() -> AnchorSigner:
    return AnchorSigner(ec.generate_private_key(ec.SECP256R1()))


def anchors_for(sign: AnchorSigner, states: list[ChainState]) -> list:  # type: ignore[type-arg]
    out = []
    prev = ""
    for number, state in enumerate(states, 1):
        anchor = sign.sign("node-1", number, state, EPOCH + number, prev)
        out.append(anchor)
        prev = anchor.signature
    return out


def test_an_anchor_reads_back_only_with_its_key() -> None:
    sign, other = signer(), signer()
    (anchor,) = anchors_for(sign, [ChainState(5, "a" * 64)])
    keys = public_keys([sign._key.public_key()])
    read = read_anchor(anchor.token, keys)
    assert (read.instance, read.number, read.seq, read.hash, read.prev) == ("node-1", 1, 5, "a" * 64, "")
    with pytest.raises(AnchorError, match="unknown key"):
        read_anchor(anchor.token, public_keys([other._key.public_key()]))
    head, payload, signature = anchor.token.split(".")
    forged = f"{head}.{payload[:-2]}AA.{signature}"
    with pytest.raises(AnchorError):
        read_anchor(forged, keys)
    with pytest.raises(AnchorError, match="not a JWS"):
        read_anchor("not-a-token", keys)


def test_the_anchor_chain_shows_a_missing_reordered_or_replaced_anchor() -> None:
    sign = signer()
    chain = anchors_for(sign, [ChainState(s, f"{s:064x}") for s in (3, 6, 9, 12)])
    assert anchor_chain_problems(chain) == []
    assert "anchors are missing" in anchor_chain_problems([chain[0], chain[2], chain[3]])[0]
    assert "missing or reordered" in anchor_chain_problems([chain[0], chain[2], chain[1]])[0]
    assert "anchors 1..1 are missing" in anchor_chain_problems(chain[1:])[0]
    replaced = sign.sign("node-1", 3, ChainState(9, "f" * 64), EPOCH, "not-the-signature")
    assert "replaced" in anchor_chain_problems([chain[0], chain[1], replaced])[0]


def test_records_are_checked_against_anchors_and_a_cut_tail_names_its_missing_range() -> None:
    sign = signer()
    chain = anchors_for(sign, [ChainState(3, "3" * 64), ChainState(9, "9" * 64)])
    assert record_problems(chain, {3: "3" * 64, 9: "9" * 64}, 1, 9) == []
    (cut,) = record_problems(chain, {3: "3" * 64}, 1, 5)
    assert "records seq 6..9 are missing" in cut and "anchor 2" in cut
    (rewritten,) = record_problems(chain, {3: "e" * 64, 9: "9" * 64}, 1, 9)
    assert "record seq 3 is not the record anchor 1 signed" in rewritten


# --- state files ---------------------------------------------------------------------------------

def test_state_files_are_replaced_whole_and_a_foreign_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "cloudwatch.json"
    write_state(path, {"a": 1})
    write_state(path, {"a": 2})
    assert read_state(path) == {"a": 2} and not list(path.parent.glob(".*.tmp"))
    assert read_state(tmp_path / "absent.json") is None
    path.write_text('{"a": 1, "a": 2}')
    with pytest.raises(StateError, match="duplicate"):
        read_state(path)
    path.write_text("[1]")
    with pytest.raises(StateError, match="not a JSON"):
        read_state(path)


def test_a_damaged_checkpoint_stops_shipping_instead_of_guessing(tmp_path: Path) -> None:
    write_state(tmp_path / "cloudwatch.json", {"position": {"segment": "../x", "offset": 1, "seq": 1,
                                                            "hash": "0" * 64}})
    with pytest.raises(StateError, match="cloudwatch.json"):
        load_ship_state(tmp_path)
    write_state(tmp_path / "cloudwatch.json", {"position": None, "floor_ms": -1})
    with pytest.raises(StateError):
        load_ship_state(tmp_path)


def test_the_anchors_file_resumes_numbering_and_ignores_a_torn_last_line(tmp_path: Path) -> None:
    sign = signer()
    chain = anchors_for(sign, [ChainState(3, "3" * 64), ChainState(7, "7" * 64)])
    (tmp_path / "anchors.jsonl").write_text("".join(a.token + "\n" for a in chain) + chain[0].token[:30])
    state = load_ship_state(tmp_path)
    assert state.last_anchor is not None and (state.last_anchor.number, state.last_anchor.seq) == (2, 7)
    assert state.last_anchor.signature == chain[1].signature


def test_the_putlogevents_body_carries_each_line_exactly() -> None:
    lines, _ = sealed_lines(2)
    tricky = lines[1].replace(b'"i":1', b'"i":"a\\\\\\"b\\\\u0007"')        # escapes, quotes, backslashes
    body = _events_body("/idgate/audit", "node-1", [lines[0], tricky], [5, 6])
    parsed = json.loads(body)
    assert parsed["logGroupName"] == "/idgate/audit" and parsed["logStreamName"] == "node-1"
    assert [e["message"].encode("ascii") for e in parsed["logEvents"]] == [lines[0], tricky]
    assert [e["timestamp"] for e in parsed["logEvents"]] == [5, 6]
