"""Retention of rotated audit segments (proxy.audit.retention): which segments go, that the deletion is
announced in the chain before it happens, that the remaining files still verify, and that nothing
else (a deleted segment the chain does not account for) does."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from proxy.audit import AuditLog, segment_files, verify_files
from proxy.audit.retention import Retention, segments_to_delete
from proxy.config import AuditConfig
from proxy.core.errors import DependencyError
from proxy.metrics import Metrics
from tests.unit.audit.test_audit import fixed_clock, records

# Each record is ~200 bytes: with 450 the file rotates after every third record.
ROTATE = 450


def make_log(path: Path, metrics: Metrics | None = None, **config: Any) -> AuditLog:
    audit = AuditConfig(path=path, rotate_bytes=ROTATE, fsync=False, group_commit_max_delay=0.0, **config)
    return AuditLog(audit, metrics or Metrics(), clock=fixed_clock)


async def write(log: AuditLog, count: int, start: int = 0) -> None:
    """One record per batch, so every batch is a possible rotation point; then wait for the retention
    the rotations set off."""
    for i in range(start, start + count):
        await log.append({"event": "decision", "i": i})
    await log.flush()


def deleted(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("idgate_audit_segments_deleted_total") or 0.0


def retention_records(path: Path) -> list[dict[str, Any]]:
    return [r for r in records(segment_files(path)) if r["event"] == "retention"]


# --- which segments --------------------------------------------------------------------------------

SEGMENTS = [(Path(f"s{i}"), size) for i, size in enumerate([100, 500, 100, 300, 200])]   # oldest first


def names(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_nothing_is_deleted_without_limits() -> None:
    assert segments_to_delete(SEGMENTS, Retention()) == []


def test_the_oldest_beyond_max_segments_are_deleted_oldest_first() -> None:
    assert names(segments_to_delete(SEGMENTS, Retention(max_segments=2))) == ["s0", "s1", "s2"]
    assert segments_to_delete(SEGMENTS, Retention(max_segments=5)) == []


def test_max_bytes_keeps_the_newest_that_fit_and_deletes_everything_older() -> None:
    # s4 + s3 = 500 fit in 600; s2 would too, but s1 does not, and retention never leaves a hole.
    assert names(segments_to_delete(SEGMENTS, Retention(max_bytes=600))) == ["s0", "s1"]
    assert names(segments_to_delete(SEGMENTS, Retention(max_bytes=550))) == ["s0", "s1", "s2"]
    assert names(segments_to_delete(SEGMENTS, Retention(max_bytes=100))) == ["s0", "s1", "s2", "s3", "s4"]


def test_the_tighter_of_both_limits_wins() -> None:
    assert names(segments_to_delete(SEGMENTS, Retention(max_segments=1, max_bytes=10_000))) == ["s0", "s1", "s2", "s3"]
    assert names(segments_to_delete(SEGMENTS, Retention(max_segments=4, max_bytes=500))) == ["s0", "s1", "s2"]


def test_a_segment_that_may_not_go_stops_the_deletion_there() -> None:
    unshipped = {"s1"}
    retention = Retention(max_segments=1, may_delete=lambda p: p.name not in unshipped)
    assert names(segments_to_delete(SEGMENTS, retention)) == ["s0"]


# --- the audit log ---------------------------------------------------------------------------------

async def test_retention_keeps_max_segments_and_the_rest_still_verifies(tmp_path: Path) -> None:
    path, metrics = tmp_path / "audit.jsonl", Metrics()
    log = make_log(path, metrics, max_segments=2)
    await log.open()
    await write(log, 30)
    await log.close()
    files = segment_files(path)
    assert len(files) == 3 and files[-1] == path                # two rotated segments and the live one
    assert deleted(metrics) > 0
    report = verify_files(files)
    assert report.ok, report.problems
    assert report.starts_after == records(files)[0]["seq"] - 1 > 0
    announced = retention_records(path)[-1]
    assert announced["through_seq"] == report.starts_after
    assert announced["segments"] >= 1 and announced["first_segment"].startswith("audit.")


async def test_retention_keeps_at_most_max_bytes_of_rotated_segments(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = make_log(path, max_bytes=2 * ROTATE)
    await log.open()
    await write(log, 30)
    await log.close()
    rotated = segment_files(path)[:-1]
    assert rotated and sum(p.stat().st_size for p in rotated) <= 2 * ROTATE
    assert verify_files(segment_files(path)).ok


async def test_without_limits_every_segment_stays(tmp_path: Path) -> None:
    path, metrics = tmp_path / "audit.jsonl", Metrics()
    log = make_log(path, metrics)
    await log.open()
    await write(log, 30)
    await log.close()
    assert deleted(metrics) == 0 and retention_records(path) == []
    assert [r["i"] for r in records(segment_files(path))] == list(range(30))
    report = verify_files(segment_files(path))
    assert report.ok and report.starts_after == 0 and report.files > 10


async def test_the_live_segment_is_never_deleted(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = make_log(path, max_bytes=ROTATE)        # not even one rotated segment fits
    await log.open()
    for i in range(12):
        await write(log, 1, start=i)
        assert segment_files(path) == [path]       # every rotated segment went; the live one stays
        report = verify_files([path])
        assert report.ok, report.problems
    await log.close()
    assert verify_files([path]).starts_after > 0


async def test_the_deletion_is_announced_before_it_happens(tmp_path: Path) -> None:
    """Write-ahead: when the retention record cannot be made durable, nothing is deleted."""
    path, metrics = tmp_path / "audit.jsonl", Metrics()

    def write_unless_retention(fd: int, data: bytes) -> int:
        if b'"event":"retention"' in data:
            raise OSError(28, "No space left on device")
        return os.write(fd, data)

    config = AuditConfig(path=path, rotate_bytes=ROTATE, fsync=False, group_commit_max_delay=0.0, max_segments=1)
    log = AuditLog(config, metrics, clock=fixed_clock, write=write_unless_retention)
    await log.open()
    for i in range(12):
        with contextlib.suppress(DependencyError):      # a record sharing the retention record's batch fails too
            await log.append({"event": "decision", "i": i})
    await log.flush()
    await log.close()
    assert deleted(metrics) == 0 and len(segment_files(path)) >= 4 and retention_records(path) == []
    report = verify_files(segment_files(path))
    assert report.ok and report.starts_after == 0


async def test_a_segment_deleted_by_anyone_else_still_fails_verification(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = make_log(path, max_segments=2)
    await log.open()
    await write(log, 30)
    await log.close()
    files = segment_files(path)
    files[0].unlink()                              # beyond what retention announced
    report = verify_files(segment_files(path))
    assert not report.ok and "the chain does not start here" in report.problems[0]


async def test_an_edited_retention_record_accounts_for_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = make_log(path, max_segments=2)
    await log.open()
    await write(log, 30)
    await log.close()
    for segment in segment_files(path):
        text = segment.read_text()
        segment.write_text(text.replace('"event":"retention"', '"event":"retentioN"'))
    report = verify_files(segment_files(path))
    assert not report.ok
    assert any("the chain does not start here" in p for p in report.problems)
    assert any("hash mismatch" in p for p in report.problems)


async def test_an_interrupted_deletion_still_verifies(tmp_path: Path) -> None:
    """Retention deletes oldest first; if it stops half-way the chain starts inside the announced range."""
    path = tmp_path / "audit.jsonl"
    log = make_log(path)
    await log.open()
    await write(log, 10)
    first, second = segment_files(path)[:2]
    through = records([second])[-1]
    await log.append({"event": "retention", "segments": 2, "first_segment": first.name,
                      "last_segment": second.name, "through_seq": through["seq"], "through_hash": through["hash"]})
    await log.close()
    first.unlink()                                 # the second was never reached
    report = verify_files(segment_files(path))
    assert report.ok, report.problems
    assert report.starts_after == records([second])[0]["seq"] - 1


async def test_files_written_before_retention_existed_verify_as_before(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = make_log(path)
    await log.open()
    await write(log, 10)
    await log.close()
    report = verify_files(segment_files(path))
    assert (report.ok, report.records, report.files, report.problems, report.starts_after) == (True, 10, 4, (), 0)
    lines = path.read_bytes().splitlines()
    assert all(json.loads(line)["event"] == "decision" for line in lines)
