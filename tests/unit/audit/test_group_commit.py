"""Group commit (proxy.audit.log): a batch waits only while an fsync is in flight, whatever arrives
meanwhile is the next batch, and a caller's cancellation touches neither the write nor the others."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from proxy.audit import AuditLog, verify_files
from proxy.config import AuditConfig
from proxy.metrics import Metrics
from tests.integration.test_audit_durability import GatedFsync
from tests.integration.test_audit_durability import started as queued
from tests.unit.audit.test_audit import fixed_clock, records


class BatchWrites:
    """os.write that remembers how many records each batch's write carried."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, fd: int, data: bytes) -> int:
        self.batches.append(data.count(b"\n"))
        return os.write(fd, data)


async def holding_a_batch(path: Path, first: dict[str, Any], *, metrics: Metrics | None = None
                          ) -> tuple[AuditLog, GatedFsync, BatchWrites, asyncio.Task[None]]:
    """An open log whose first batch, `first` alone, is held in its fsync; and the caller waiting for it."""
    gate, writes = GatedFsync(), BatchWrites()
    log = AuditLog(AuditConfig(path=path, fsync=True), metrics or Metrics(), clock=fixed_clock,
                   write=writes, fsync=gate)
    await log.open()
    gate.gate = True
    waiting = await queued(lambda: log.append(first))
    assert await asyncio.to_thread(gate.entered.wait, 10)
    return log, gate, writes, waiting


def sample(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


async def test_records_queued_while_an_fsync_is_in_flight_all_form_the_next_batch(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    metrics = Metrics()
    log, gate, writes, first = await holding_a_batch(path, {"event": "decision", "i": 0}, metrics=metrics)
    waiting = [await queued(lambda i=i: log.append({"event": "decision", "i": i})) for i in range(1, 6)]
    for i in range(6, 10):
        log.append_nowait({"event": "outcome", "i": i})
    assert writes.batches == [1]
    gate.release.set()
    await asyncio.gather(first, *waiting)
    await log.flush()
    await log.close()
    assert writes.batches == [1, 9]
    assert [r["i"] for r in records([path])] == list(range(10))
    assert verify_files([path]).ok
    assert sample(metrics, "idgate_audit_batch_records_count") == 2
    assert sample(metrics, "idgate_audit_batch_records_sum") == 10
    assert sample(metrics, "idgate_audit_append_seconds_count") == 10


async def test_with_the_default_config_a_lone_append_is_written_without_waiting(tmp_path: Path) -> None:
    """Nothing in flight: the record is written in the loop iteration after it is queued, not after a
    wait for companions (with fsync off the write happens on the loop, so iterations can be counted)."""
    writes = BatchWrites()
    config = AuditConfig(path=tmp_path / "audit.jsonl", fsync=False)
    assert config.group_commit_max_delay == 0
    log = AuditLog(config, Metrics(), clock=fixed_clock, write=writes)
    await log.open()
    for n in range(3):
        log.append_nowait({"event": "outcome", "n": n})
        await asyncio.sleep(0)                 # one loop iteration, no time: a wait would not be over
        assert writes.batches == [1] * (n + 1)
    await log.close()


async def test_a_cancelled_caller_cancels_neither_the_write_nor_the_others_in_its_batch(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log, gate, writes, first = await holding_a_batch(path, {"event": "decision", "caller": "first"})
    kept = await queued(lambda: log.append({"event": "decision", "caller": "kept"}))
    cancelled = await queued(lambda: log.append({"event": "decision", "caller": "cancelled"}))
    also_kept = await queued(lambda: log.append({"event": "decision", "caller": "also kept"}))
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    gate.release.set()
    seqs = list(await asyncio.gather(first, kept, also_kept))      # each answered with its record's seq
    assert all(isinstance(seq, int) for seq in seqs) and seqs == sorted(set(seqs))
    await log.close()
    assert writes.batches == [1, 3]
    assert [r["caller"] for r in records([path])] == ["first", "kept", "cancelled", "also kept"]


async def test_close_writes_what_is_queued_behind_a_batch_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log, gate, _, first = await holding_a_batch(path, {"event": "decision", "i": 0})
    log.append_nowait({"event": "outcome", "i": 1})
    closing = asyncio.create_task(log.close())
    gate.release.set()
    await asyncio.gather(first, closing)
    assert [r["i"] for r in records([path])] == [0, 1]
    assert not log.healthy


async def test_a_failed_batch_fails_its_callers_and_the_next_batch_goes_on(tmp_path: Path) -> None:
    """The batch queued behind a failing fsync starts as soon as the failure is reported."""
    path = tmp_path / "audit.jsonl"
    failures = {"left": 0}
    entered, release = threading.Event(), threading.Event()

    def fsync(fd: int) -> None:
        if failures["left"]:
            failures["left"] -= 1
            entered.set()
            assert release.wait(10)
            raise OSError(5, "I/O error")
        os.fsync(fd)

    metrics = Metrics()
    log = AuditLog(AuditConfig(path=path, fsync=True), metrics, clock=fixed_clock, fsync=fsync)
    await log.open()
    failures["left"] = 1
    lost = await queued(lambda: log.append({"event": "decision", "i": "lost"}))
    assert await asyncio.to_thread(entered.wait, 10)
    behind = await queued(lambda: log.append({"event": "decision", "i": 1}))
    release.set()
    results = await asyncio.gather(lost, behind, return_exceptions=True)
    await log.close()
    assert type(results[0]).__name__ == "DependencyError" and isinstance(results[1], int)
    assert [(r["seq"], r["i"]) for r in records([path])] == [(1, 1)]
    assert sample(metrics, "idgate_audit_failures_total") == 1
