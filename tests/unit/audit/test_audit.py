"""Audit record format, hash chain, verification, rotation and resume (proxy.audit)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from proxy.audit import AuditLog, segment_files, verify_files
from proxy.audit.chain import GENESIS, canonical
from proxy.config import AuditConfig
from proxy.core.errors import DependencyError
from proxy.metrics import Metrics

# 2026-11-22T23:59:59.5Z: a half second is exact in binary, so the formatted microseconds are too.
EPOCH = datetime(2026, 11, 22, 23, 59, 59, tzinfo=UTC).timestamp() + 0.5


def fixed_clock() -> float:
    return EPOCH


def make_log(path: Path, *, rotate_bytes: int = 1 << 20, metrics: Metrics | None = None,
             **seams: Any) -> AuditLog:
    config = AuditConfig(path=path, rotate_bytes=rotate_bytes, fsync=False, group_commit_max_delay=0.0)
    return AuditLog(config, metrics or Metrics(), clock=fixed_clock, **seams)


async def write_records(path: Path, count: int, *, rotate_bytes: int = 1 << 20, start: int = 0) -> None:
    """Append records one at a time, so every record is its own batch (and rotation point)."""
    log = make_log(path, rotate_bytes=rotate_bytes)
    await log.open()
    for i in range(start, start + count):
        await log.append({"event": "decision", "i": i})
    await log.close()


def records(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(line) for p in paths for line in p.read_bytes().splitlines()]


def failures(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("idgate_audit_failures_total") or 0.0


# --- format and hash ---------------------------------------------------------------------------

def test_canonical_serialization_is_sorted_compact_ascii_and_independent_of_insertion_order() -> None:
    a = canonical({"b": [1, {"d": 1, "c": 2}], "a": "é\u2028"})
    b = canonical({"a": "é\u2028", "b": [1, {"c": 2, "d": 1}]})
    assert a == b == b'{"a":"\\u00e9\\u2028","b":[1,{"c":2,"d":1}]}'


def test_canonical_serialization_refuses_nan() -> None:
    with pytest.raises(ValueError):
        canonical({"x": float("nan")})


async def test_first_record_is_exactly_the_documented_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = make_log(path)
    await log.open()
    await log.append({"event": "decision", "rule": "r1"})
    await log.close()

    covered = (b'{"event":"decision","prev":"' + b"0" * 64 +
               b'","rule":"r1","seq":1,"ts":"2026-11-22T23:59:59.500000Z","v":1}')
    digest = hashlib.sha256(b"0" * 64 + covered).hexdigest().encode()
    assert path.read_bytes() == covered[:-1] + b',"hash":"' + digest + b'"}\n'


async def test_each_record_chains_to_the_previous_hash(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 3)
    recs = records([path])
    assert [r["seq"] for r in recs] == [1, 2, 3]
    assert recs[0]["prev"] == GENESIS
    for before, after in zip(recs, recs[1:]):
        assert after["prev"] == before["hash"]
    for r in recs:
        body = {k: v for k, v in r.items() if k != "hash"}
        assert hashlib.sha256(r["prev"].encode() + canonical(body)).hexdigest() == r["hash"]


def test_record_hash_depends_on_every_field() -> None:
    one = canonical({"event": "decision", "rule": "a", "prev": GENESIS})
    two = canonical({"event": "decision", "rule": "b", "prev": GENESIS})
    assert hashlib.sha256(GENESIS.encode() + one).digest() != hashlib.sha256(GENESIS.encode() + two).digest()


# --- verification ------------------------------------------------------------------------------

def rewrite_lines(path: Path, edit: Any) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(edit(lines)))


async def test_verify_accepts_an_untouched_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 5)
    assert verify_files([path]) == verify_files(segment_files(path))
    report = verify_files([path])
    assert (report.ok, report.records, report.files, report.problems) == (True, 5, 1, ())


async def test_verify_detects_an_edited_value(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 5)
    rewrite_lines(path, lambda ls: [ls[0], ls[1], ls[2].replace(b'"i":2', b'"i":7'), *ls[3:]])
    report = verify_files([path])
    assert not report.ok
    assert report.problems == (f"{path}:3: hash mismatch: record seq 3 was edited",)


async def test_verify_detects_a_deleted_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 5)
    rewrite_lines(path, lambda ls: ls[:2] + ls[3:])
    report = verify_files([path])
    assert not report.ok
    assert any(p.startswith(f"{path}:3: seq gap: expected 3, found 4") for p in report.problems)
    assert any(p.startswith(f"{path}:3: prev does not match") for p in report.problems)


async def test_verify_detects_two_swapped_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 5)
    rewrite_lines(path, lambda ls: [ls[0], ls[2], ls[1], *ls[3:]])
    report = verify_files([path])
    assert not report.ok
    where = {p.split(": ", 1)[0] for p in report.problems}
    assert {f"{path}:2", f"{path}:3"} <= where
    assert any("seq goes backwards" in p for p in report.problems)


async def test_verify_detects_a_bad_json_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 3)
    rewrite_lines(path, lambda ls: [ls[0], b'{"v":1,"seq":\n', ls[2]])
    report = verify_files([path])
    assert not report.ok
    assert report.problems[0].startswith(f"{path}:2: bad JSON")


async def test_verify_detects_a_duplicate_key_even_with_a_recomputed_hash(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 1)
    line = path.read_bytes()
    path.write_bytes(line.replace(b'{"event":"decision"', b'{"event":"decision","event":"outcome"'))
    report = verify_files([path])
    assert report.problems == (f"{path}:1: duplicate key in JSON object",)


async def test_verify_detects_a_line_cut_mid_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 2)
    path.write_bytes(path.read_bytes()[:-20])
    report = verify_files([path])
    assert report.problems[0] == f"{path}:2: unterminated last line (file truncated mid-record)"


def test_verify_of_nothing_is_not_ok(tmp_path: Path) -> None:
    assert not verify_files([]).ok
    missing = verify_files([tmp_path / "nope.jsonl"])
    assert not missing.ok and missing.problems[0].startswith(f"{tmp_path / 'nope.jsonl'}: cannot read")


# --- rotation ----------------------------------------------------------------------------------

# Each record is ~200 bytes: with 450 the file rotates after every third record.
ROTATE = 450


async def test_rotation_continues_seq_and_prev_across_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 10, rotate_bytes=ROTATE)
    files = segment_files(path)
    assert len(files) == 4 and files[-1] == path
    assert [len(f.read_bytes().splitlines()) for f in files] == [3, 3, 3, 1]
    assert files[0].name == "audit.20261122T235959Z.000000000003.jsonl"
    recs = records(files)
    assert [r["seq"] for r in recs] == list(range(1, 11))
    assert all(b["prev"] == a["hash"] for a, b in zip(recs, recs[1:]))
    assert verify_files(files).ok


async def test_segment_files_ignores_other_workers_and_orders_by_seq(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 7, rotate_bytes=ROTATE)
    await write_records(tmp_path / "audit.w1.jsonl", 4, rotate_bytes=ROTATE)
    # A clock that stepped back must not reorder segments: the seq in the name decides.
    (tmp_path / "audit.20261122T235959Z.000000000006.jsonl").rename(tmp_path / "audit.20200101T000000Z.000000000006.jsonl")
    names = [p.name for p in segment_files(path)]
    assert names == ["audit.20261122T235959Z.000000000003.jsonl", "audit.20200101T000000Z.000000000006.jsonl",
                     "audit.jsonl"]


async def test_verify_detects_a_truncated_rotated_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 10, rotate_bytes=ROTATE)
    files = segment_files(path)
    rewrite_lines(files[0], lambda ls: ls[:-1])
    report = verify_files(files)
    assert not report.ok
    assert report.problems[0].startswith(f"{files[1]}:1: does not follow the last record of {files[0]} (seq 2)")


async def test_verify_detects_a_deleted_rotated_file_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 10, rotate_bytes=ROTATE)
    files = segment_files(path)
    files[1].unlink()
    report = verify_files(segment_files(path))
    assert not report.ok
    assert report.problems[0].startswith(f"{files[2]}:1: does not follow the last record of {files[0]}")
    assert any("seq gap: expected 4, found 7" in p for p in report.problems)


async def test_verify_detects_a_deleted_oldest_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 10, rotate_bytes=ROTATE)
    segment_files(path)[0].unlink()
    report = verify_files(segment_files(path))
    assert not report.ok and "the chain does not start here" in report.problems[0]


# --- resume ------------------------------------------------------------------------------------

async def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 3)
    await write_records(path, 2, start=3)
    recs = records([path])
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5]
    assert verify_files([path]).ok


async def test_reopen_continues_from_the_last_rotated_file_when_the_active_one_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 5, rotate_bytes=ROTATE)
    # A crash between renaming the full file aside and creating the new one.
    path.rename(tmp_path / "audit.20261122T235959Z.000000000005.jsonl")
    await write_records(path, 1, start=5)
    assert [r["seq"] for r in records([path])] == [6]
    assert len(segment_files(path)) == 3
    assert verify_files(segment_files(path)).ok


async def test_reopen_drops_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 2)
    with path.open("ab") as f:
        f.write(b'{"event":"decision","i":99,"prev":"')    # a write cut short by a crash
    await write_records(path, 1, start=2)
    assert b'"i":99' not in path.read_bytes()
    assert [r["seq"] for r in records([path])] == [1, 2, 3]
    assert verify_files([path]).ok


async def test_reopen_keeps_a_broken_complete_line_as_evidence_and_chains_past_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 2)
    with path.open("ab") as f:
        f.write(b"not a record\n")
    await write_records(path, 1, start=2)
    report = verify_files([path])
    assert report.problems == (f"{path}:3: bad JSON (Expecting value: line 1 column 1 (char 0))",)
    assert records_after_garbage(path)["seq"] == 3


@pytest.mark.parametrize("junk_bytes", [10, 70_000, 140_000])
@pytest.mark.parametrize("terminated", [True, False])
async def test_reopen_finds_the_last_record_behind_junk_of_any_size(tmp_path: Path, junk_bytes: int,
                                                                     terminated: bool) -> None:
    path = tmp_path / "audit.jsonl"
    log = make_log(path)
    await log.open()
    for i in range(100):     # ~1.2 KB records: the file spans several 64 KiB scan blocks
        await log.append({"event": "decision", "i": i, "pad": "x" * 1000})
    await log.close()
    with path.open("ab") as f:
        f.write(b"z" * junk_bytes + (b"\n" if terminated else b""))
    await write_records(path, 1, start=100)
    last = records_after_garbage(path)
    assert last["seq"] == 101 and last["i"] == 100
    report = verify_files([path])
    assert report.ok is not terminated     # a complete junk line stays as evidence; a torn tail goes
    assert len(report.problems) == (1 if terminated else 0)


def records_after_garbage(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_bytes().splitlines()[-1]))


# --- opening and refusing ----------------------------------------------------------------------

async def test_second_writer_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = make_log(path)
    await first.open()
    second = make_log(path)
    with pytest.raises(DependencyError, match="locked by another process") as caught:
        await second.open()
    assert caught.value.reason == "audit_unavailable"
    assert not second.healthy
    await first.append({"event": "decision"})
    await first.close()
    assert verify_files([path]).ok


@pytest.mark.parametrize("device", ["/dev/null", "/dev/full"])
async def test_a_path_that_is_not_a_regular_file_is_refused(tmp_path: Path, device: str) -> None:
    link = tmp_path / "audit.jsonl"
    link.symlink_to(device)
    with pytest.raises(DependencyError, match="not a regular file"):
        await make_log(link).open()
    with pytest.raises(DependencyError, match="not a regular file"):
        await make_log(Path(device)).open()


async def test_records_cannot_set_chain_fields_and_need_an_event(tmp_path: Path) -> None:
    log = make_log(tmp_path / "audit.jsonl")
    await log.open()
    for reserved in ("v", "seq", "ts", "prev", "hash"):
        with pytest.raises(ValueError, match=reserved):
            await log.append({"event": "decision", reserved: 1})
        with pytest.raises(ValueError, match=reserved):
            log.append_nowait({"event": "outcome", reserved: 1})
    with pytest.raises(ValueError, match="event"):
        await log.append({"rule": "r"})
    await log.close()
    assert (tmp_path / "audit.jsonl").read_bytes() == b""


async def test_append_before_open_and_after_close_fails_closed(tmp_path: Path) -> None:
    metrics = Metrics()
    log = make_log(tmp_path / "audit.jsonl", metrics=metrics)
    assert not log.healthy
    with pytest.raises(DependencyError):
        await log.append({"event": "decision"})
    await log.open()
    assert log.healthy
    await log.close()
    assert not log.healthy
    with pytest.raises(DependencyError):
        await log.append({"event": "decision"})
    log.append_nowait({"event": "outcome"})       # counted, never raised
    assert failures(metrics) == 3


async def test_an_unserializable_record_fails_alone_without_a_gap(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    metrics = Metrics()
    log = make_log(path, metrics=metrics)
    await log.open()
    results = await asyncio.gather(
        log.append({"event": "decision", "i": 1}),
        log.append({"event": "decision", "bad": object()}),
        log.append({"event": "decision", "i": 2}),
        return_exceptions=True)
    await log.close()
    assert results[0] == 1 and results[2] == 2 and isinstance(results[1], TypeError)   # seqs: no gap
    assert [(r["seq"], r["i"]) for r in records([path])] == [(1, 1), (2, 2)]
    assert verify_files([path]).ok
    assert failures(metrics) == 1


async def test_a_full_queue_refuses_instead_of_growing(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    metrics = Metrics()
    armed, entered, release = threading.Event(), threading.Event(), threading.Event()

    def slow_fsync(fd: int) -> None:   # runs in the writer thread and holds the batch there
        if armed.is_set():
            entered.set()
            release.wait(10)
        os.fsync(fd)

    config = AuditConfig(path=path, fsync=True, group_commit_max_delay=0.0)
    log = AuditLog(config, metrics, clock=fixed_clock, fsync=slow_fsync, max_pending=2)
    await log.open()
    armed.set()
    first = asyncio.create_task(log.append({"event": "decision", "i": 0}))
    assert await asyncio.to_thread(entered.wait, 10)          # the writer holds record 0
    log.append_nowait({"event": "outcome", "i": 1})
    log.append_nowait({"event": "outcome", "i": 2})
    with pytest.raises(DependencyError, match="overloaded"):
        await log.append({"event": "decision", "i": 3})
    log.append_nowait({"event": "outcome", "i": 4})
    release.set()
    await first
    await log.close()
    assert [r["i"] for r in records([path])] == [0, 1, 2]
    assert failures(metrics) == 2
    assert verify_files([path]).ok


async def test_flush_waits_for_records_queued_without_waiting(tmp_path):
    from proxy.config import AuditConfig
    from proxy.metrics import Metrics
    from proxy.audit import AuditLog

    log = AuditLog(AuditConfig(path=tmp_path / "a.jsonl"), Metrics())
    await log.open()
    try:
        for i in range(50):
            log.append_nowait({"event": "outcome", "n": i})
        await log.flush()
        assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 50
    finally:
        await log.close()


# --- metrics -----------------------------------------------------------------------------------

class Statvfs:
    """os.statvfs for the audit directory: fixed figures, or an error."""

    def __init__(self, available_blocks: int, block_size: int = 4096) -> None:
        self.result = SimpleNamespace(f_bavail=available_blocks, f_frsize=block_size)
        self.error: OSError | None = None
        self.asked: list[Path] = []

    def __call__(self, path: Path) -> SimpleNamespace:
        self.asked.append(path)
        if self.error is not None:
            raise self.error
        return self.result


async def test_free_bytes_on_the_audit_filesystem_are_read_at_scrape_time(tmp_path: Path) -> None:
    metrics, statvfs = Metrics(), Statvfs(10)
    log = make_log(tmp_path / "audit" / "audit.jsonl", metrics=metrics, statvfs=statvfs)
    await log.open()
    assert statvfs.asked == []                 # nothing on the write path
    await log.append({"event": "decision"})
    assert statvfs.asked == []
    assert metrics.registry.get_sample_value("idgate_audit_free_bytes") == 40960
    assert statvfs.asked == [tmp_path / "audit"]
    statvfs.error = OSError(5, "I/O error")
    assert math.isnan(metrics.registry.get_sample_value("idgate_audit_free_bytes"))
    await log.close()


async def test_free_bytes_come_from_the_real_filesystem(tmp_path: Path) -> None:
    metrics = Metrics()
    log = make_log(tmp_path / "audit.jsonl", metrics=metrics)
    await log.open()
    st = os.statvfs(tmp_path)
    free = metrics.registry.get_sample_value("idgate_audit_free_bytes")
    assert abs(free - st.f_bavail * st.f_frsize) < 256 << 20   # other writers on this disk meanwhile
    await log.close()
