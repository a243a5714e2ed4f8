"""The audit writer under faults (proxy.audit.log, proxy.audit.sink): transient fsync errors, a batch that
cannot be sealed, maintenance cancelled before it starts, concurrent closes.

Each test states the guarantee it holds the writer to; found by a red-team review of the group-commit rework."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from proxy.audit import AuditLog, verify_files
from proxy.config import AuditConfig
from proxy.core.errors import DependencyError
from proxy.metrics import Metrics
from tests.integration.test_audit_durability import started
from tests.unit.audit.test_group_commit import BatchWrites
from tests.unit.audit.test_audit import fixed_clock, records


class FlakyFsync:
    """os.fsync that fails the next `fail` calls with EIO (a transient disk error)."""

    def __init__(self) -> None:
        self.fail = 0

    def __call__(self, fd: int) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError(errno.EIO, "injected fsync failure")
        os.fsync(fd)


def _rec(who: str) -> dict[str, str]:
    return {"event": "decision", "decision": "allow", "caller": who}


async def test_two_transient_fsync_failures_never_leave_a_failed_record_in_the_chain(tmp_path: Path) -> None:
    """After a failed fsync the sink cuts the file back, but keeps its idea of the file's length
    (_Good.size) at the length *with* the failed batch.  The next failure then "cuts back" to that
    too-large length: part of a batch whose callers got 503 stays in the file (here exactly one whole
    record, a durable 'allow' for a refused request), and the next batch, sealed from the unchanged
    chain state, reuses its seq: the chain forks and `idgate audit verify` fails."""
    path = tmp_path / "audit.jsonl"
    fsync, writes = FlakyFsync(), BatchWrites()
    log = AuditLog(AuditConfig(path=path, fsync=True), Metrics(), clock=fixed_clock, write=writes, fsync=fsync)
    await log.open()
    await log.append(_rec("aaaa"))                       # seq 1
    fsync.fail = 1
    with pytest.raises(DependencyError):
        await log.append(_rec("bbbb"))                   # fails; cut back (fine on disk)
    await log.append(_rec("cccc"))                       # seq 2
    fsync.fail = 1
    outcome = await asyncio.gather(log.append(_rec("dddd")), log.append(_rec("eeee")), return_exceptions=True)
    assert writes.batches == [1, 1, 1, 2]                # d and e were one batch, and it failed
    assert all(isinstance(o, DependencyError) for o in outcome)
    await log.append(_rec("ffff"))                       # seq 3
    await log.close()
    whos = [r["caller"] for r in records([path])]
    assert whos == ["aaaa", "cccc", "ffff"], f"records of refused requests on disk: {whos}"
    report = verify_files([path])
    assert report.ok, report.problems


async def test_an_os_error_while_sealing_a_batch_fails_its_callers_instead_of_leaving_them_waiting(
        tmp_path: Path) -> None:
    """_written treats any OSError as "the write failed" and fails only `sealed`; an OSError raised
    on the loop before the batch was sealed (here datetime.fromtimestamp's EOVERFLOW for a clock far
    out of range) leaves `sealed` empty, so no caller is answered: every request of that batch hangs
    instead of getting 503.  The old writer failed the whole batch (fail closed)."""
    path = tmp_path / "audit.jsonl"
    now = [fixed_clock()]
    log = AuditLog(AuditConfig(path=path, fsync=True), Metrics(), clock=lambda: now[0])
    await log.open()
    now[0] = 1e17                                        # gmtime overflows: OSError(EOVERFLOW)
    waiting = await started(lambda: log.append(_rec("x")))
    await log.flush()                                   # the batch is settled (written or failed)
    assert waiting.done(), "the caller was never answered: its batch failed but its future was dropped"
    with pytest.raises(DependencyError):
        await waiting
    now[0] = fixed_clock()
    await log.close()


async def test_maintenance_cancelled_before_it_starts_does_not_stall_the_writer(tmp_path: Path) -> None:
    """A rotation runs as a task created in _written; its `finally` restarts the batch cycle.  A task
    cancelled before its first step never enters that `finally` (e.g. a shutdown helper cancelling
    all other tasks): _maintenance stays set, _busy stays True, and every later append, flush and
    close waits forever.  The old writer refused new records once its task was done."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(AuditConfig(path=path, fsync=True, rotate_bytes=10), Metrics(), clock=fixed_clock)
    await log.open()
    await log.append(_rec("first"))                     # over rotate_bytes: a rotation task is created
    me = asyncio.current_task()
    for task in asyncio.all_tasks():
        if task is not me:
            task.cancel()
    later = asyncio.ensure_future(log.append(_rec("later")))
    # A bound, not synchronization: a healthy writer answers in microseconds.
    done, _ = await asyncio.wait([later], timeout=5)
    assert later in done, "append hangs: the writer stalled after its maintenance task was cancelled"
    await log.close()


async def test_close_called_twice_concurrently(tmp_path: Path) -> None:
    """Two shutdown paths closing the log at once: the second resumes after the first set _thread to
    None and calls None.stop()."""
    log = AuditLog(AuditConfig(path=tmp_path / "audit.jsonl", fsync=True), Metrics(), clock=fixed_clock)
    await log.open()
    await log.append(_rec("x"))
    results = await asyncio.gather(log.close(), log.close(), return_exceptions=True)
    assert results == [None, None], results
