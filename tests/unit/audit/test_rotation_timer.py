"""The audit log's writer id in every record, its rotation listeners, and rotation by age
(audit.rotate_seconds) for segments that stop growing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from proxy.audit import AuditLog, segment_files, verify_files
from proxy.audit.chain import ChainState, line_ts
from proxy.config import AuditConfig
from proxy.metrics import Metrics


def make_log(path: Path, **options: Any) -> AuditLog:
    config = AuditConfig(path=path, fsync=False, **options)
    return AuditLog(config, Metrics())


async def test_every_record_names_its_writer(tmp_path: Path) -> None:
    log = make_log(tmp_path / "audit.jsonl", instance="web-1.w0")
    await log.open()
    await log.append({"event": "decision", "i": 1})
    await log.append({"event": "outcome", "i": 2})
    await log.close()
    lines = (tmp_path / "audit.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["instance"] for line in lines] == ["web-1.w0", "web-1.w0"]
    assert verify_files([tmp_path / "audit.jsonl"]).ok


async def test_a_caller_cannot_set_the_writer_id(tmp_path: Path) -> None:
    log = make_log(tmp_path / "audit.jsonl", instance="web-1")
    await log.open()
    try:
        await log.append({"event": "decision", "instance": "someone-else"})
    except ValueError as exc:
        assert "instance" in str(exc)
    else:
        raise AssertionError("a record with its own instance field was accepted")
    finally:
        await log.close()


async def test_a_quiet_segment_rotates_by_age_and_listeners_hear_its_last_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = make_log(path, instance="web-1", rotate_seconds=0.05)
    rotated: asyncio.Queue[ChainState] = asyncio.Queue()
    log.on_rotation(rotated.put_nowait)
    await log.open()
    await log.append({"event": "decision", "i": 1})
    await log.append({"event": "decision", "i": 2})
    # No record comes after these two: only the timer can rotate the segment.
    state = await asyncio.wait_for(rotated.get(), timeout=10)
    assert state == log.durable and state.seq == 2
    files = segment_files(path)
    assert len(files) == 2 and files[0].name.endswith(".000000000002.jsonl")
    assert path.read_bytes() == b""
    # The fresh segment has no records: no timer runs for it until one comes.
    await log.append({"event": "decision", "i": 3})
    state = await asyncio.wait_for(rotated.get(), timeout=10)
    assert state.seq == 3
    await log.close()
    assert rotated.empty()
    report = verify_files(segment_files(path))
    assert report.ok and report.records == 3


async def test_without_rotate_seconds_nothing_rotates_a_small_segment(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = make_log(path, instance="web-1")
    heard: list[ChainState] = []
    log.on_rotation(heard.append)
    await log.open()
    await log.append({"event": "decision"})
    await log.flush()
    await log.close()
    assert heard == [] and segment_files(path) == [path]


async def test_a_field_that_would_sort_after_ts_is_refused(tmp_path: Path) -> None:
    """Every line ends with ts, v and hash, so a reader finds a record's time without parsing it."""
    log = make_log(tmp_path / "audit.jsonl", instance="web-1")
    await log.open()
    try:
        for name in ("user", "tz", "ts_extra", "中"):
            try:
                await log.append({"event": "decision", name: 1})
            except ValueError as exc:
                assert "sort after 'ts'" in str(exc)
            else:
                raise AssertionError(f"a record with field {name!r} was accepted")
        await log.append({"event": "decision", "trace_id": "ok"})
    finally:
        await log.close()
    (line,) = (tmp_path / "audit.jsonl").read_bytes().splitlines()
    assert line_ts(line) == json.loads(line)["ts"]


async def test_rotate_now_rotates_a_segment_with_records_and_never_an_empty_one(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = make_log(path, instance="web-1")
    heard: list[ChainState] = []
    log.on_rotation(heard.append)
    await log.open()
    await log.rotate()                        # nothing written yet: no empty segment for S3 to refuse
    assert segment_files(path) == [path] and heard == []
    await log.append({"event": "decision"})
    await log.rotate()
    assert [s.seq for s in heard] == [1] and len(segment_files(path)) == 2
    await log.rotate()                        # the fresh live segment is empty again
    assert len(segment_files(path)) == 2
    await log.close()
