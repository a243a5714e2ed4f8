"""The audit log on a real disk with real fsync: group commit under concurrency, cancellation,
write failures (injected and from the kernel) with recovery, a vanished file, and a SIGKILLed writer."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.audit import AuditLog, segment_files, verify_files
from proxy.config import AuditConfig
from proxy.core.errors import DependencyError
from proxy.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]


class CountingFsync:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        os.fsync(fd)


def make_log(path: Path, metrics: Metrics, *, delay: float = 0.0, **seams: Any) -> AuditLog:
    config = AuditConfig(path=path, rotate_bytes=1 << 30, fsync=True, group_commit_max_delay=delay)
    return AuditLog(config, metrics, **seams)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def sample(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


# --- group commit ------------------------------------------------------------------------------

@pytest.mark.parametrize("delay", [0.0, 0.002])
async def test_200_concurrent_appends_share_few_fsyncs(tmp_path: Path, delay: float) -> None:
    path = tmp_path / "audit.jsonl"
    metrics, fsync = Metrics(), CountingFsync()
    log = make_log(path, metrics, delay=delay, fsync=fsync)
    await log.open()
    opened_fsyncs = fsync.calls       # the directory entry of the new file
    await asyncio.gather(*(log.append({"event": "decision", "caller": i}) for i in range(200)))
    batch_fsyncs = fsync.calls - opened_fsyncs
    await log.close()

    recs = lines(path)
    assert [r["seq"] for r in recs] == list(range(1, 201))
    assert sorted(r["caller"] for r in recs) == list(range(200))
    assert verify_files([path]).ok
    assert 0 < batch_fsyncs <= 10
    assert sample(metrics, "idgate_audit_batch_records_sum") == 200
    assert sample(metrics, "idgate_audit_batch_records_count") == batch_fsyncs
    assert sample(metrics, "idgate_audit_append_seconds_count") == 200


async def test_staggered_concurrent_appenders_batch_while_fsync_is_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    metrics, fsync = Metrics(), CountingFsync()
    log = make_log(path, metrics, delay=0.002, fsync=fsync)
    await log.open()

    async def appender(n: int) -> None:
        for i in range(10):
            await log.append({"event": "decision", "caller": n, "i": i})

    await asyncio.gather(*(appender(n) for n in range(50)))
    await log.close()
    recs = lines(path)
    assert len(recs) == 500 and verify_files([path]).ok
    for n in range(50):     # each caller's records are in its own order
        assert [r["i"] for r in recs if r["caller"] == n] == list(range(10))
    assert fsync.calls < 500 / 5


async def test_a_lone_appender_stops_waiting_for_companions_that_never_come(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = make_log(path, Metrics(), delay=0.5)
    await log.open()
    clock = time.monotonic
    started_at = clock()
    await log.append({"event": "decision", "i": 0})
    probed = clock() - started_at
    started_at = clock()
    await log.append({"event": "decision", "i": 1})
    skipped = clock() - started_at
    await log.close()
    assert probed >= 0.45           # the first batch waited for companions up to the bound
    assert skipped < 0.25           # nobody came, so the next one is written straight away
    assert verify_files([path]).ok


# --- cancellation ------------------------------------------------------------------------------

class GatedFsync:
    """An fsync that holds the writer thread until the test lets it go."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.gate = False

    def __call__(self, fd: int) -> None:
        if self.gate:
            self.entered.set()
            assert self.release.wait(10)
        os.fsync(fd)


async def started(coro_fn: Callable[[], Any]) -> asyncio.Task[Any]:
    """Start a task and return once it has run up to its first suspension (its record is queued)."""
    ready = asyncio.Event()

    async def run() -> Any:
        ready.set()
        return await coro_fn()

    task = asyncio.create_task(run())
    await ready.wait()
    return task


async def test_a_caller_cancelled_while_queued_is_still_written_in_order(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    gate = GatedFsync()
    log = make_log(path, Metrics(), fsync=gate)
    await log.open()
    gate.gate = True
    in_flight = await started(lambda: log.append({"event": "decision", "caller": "first"}))
    assert await asyncio.to_thread(gate.entered.wait, 10)
    queued = await started(lambda: log.append({"event": "decision", "caller": "cancelled"}))
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    gate.release.set()
    await in_flight
    await log.append({"event": "decision", "caller": "after"})
    await log.close()
    assert [r["caller"] for r in lines(path)] == ["first", "cancelled", "after"]
    assert verify_files([path]).ok


async def test_a_caller_cancelled_during_its_fsync_leaves_no_gap(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    gate = GatedFsync()
    log = make_log(path, Metrics(), fsync=gate)
    await log.open()
    gate.gate = True
    task = await started(lambda: log.append({"event": "decision", "caller": "cancelled"}))
    assert await asyncio.to_thread(gate.entered.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.gate = False
    gate.release.set()
    await log.append({"event": "decision", "caller": "after"})
    await log.close()
    assert [(r["seq"], r["caller"]) for r in lines(path)] == [(1, "cancelled"), (2, "after")]
    assert verify_files([path]).ok


# --- write failures ----------------------------------------------------------------------------

class FailingWrite:
    """os.write, or an error after writing `partial` bytes of the batch while `error` is set."""

    def __init__(self) -> None:
        self.error: int | None = None
        self.partial = 0

    def __call__(self, fd: int, data: bytes) -> int:
        if self.error is None:
            return os.write(fd, data)
        if self.partial:
            written, self.partial = os.write(fd, data[: self.partial]), 0
            return written
        raise OSError(self.error, os.strerror(self.error))


@pytest.mark.parametrize("partial", [0, 37])
async def test_enospc_fails_the_batch_closed_and_the_log_recovers(tmp_path: Path, partial: int) -> None:
    path = tmp_path / "audit.jsonl"
    metrics, write = Metrics(), FailingWrite()
    log = make_log(path, metrics, write=write)
    await log.open()
    for i in range(2):
        await log.append({"event": "decision", "i": i})
    good = path.read_bytes()

    write.error, write.partial = errno.ENOSPC, partial
    results = await asyncio.gather(*(log.append({"event": "decision", "lost": n}) for n in range(5)),
                                   return_exceptions=True)
    assert all(isinstance(r, DependencyError) and r.reason == "audit_unavailable" for r in results)
    assert not log.healthy
    assert sample(metrics, "idgate_audit_failures_total") == 5
    assert path.read_bytes() == good          # nothing of the failed batch is left behind

    write.error = None
    await log.append({"event": "decision", "i": 2})
    assert log.healthy
    await log.close()
    assert [(r["seq"], r["i"]) for r in lines(path)] == [(1, 0), (2, 1), (3, 2)]
    assert verify_files([path]).ok


async def test_bytes_written_counts_durable_records_only(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    metrics, write = Metrics(), FailingWrite()
    log = make_log(path, metrics, write=write)
    await log.open()
    await log.append({"event": "decision", "i": 0})
    assert sample(metrics, "idgate_audit_bytes_written_total") == path.stat().st_size
    write.error, write.partial = errno.ENOSPC, 37
    with pytest.raises(DependencyError):
        await log.append({"event": "decision", "lost": 1})
    write.error = None
    await log.append({"event": "decision", "i": 2})
    await log.close()
    assert sample(metrics, "idgate_audit_bytes_written_total") == path.stat().st_size


async def test_a_failed_fsync_is_rolled_back_even_when_the_retry_fsync_fails_too(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    metrics = Metrics()
    failing = {"left": 0}

    def fsync(fd: int) -> None:
        if failing["left"]:
            failing["left"] -= 1
            raise OSError(errno.EIO, "I/O error")
        os.fsync(fd)

    log = make_log(path, metrics, fsync=fsync)
    await log.open()
    await log.append({"event": "decision", "i": 0})
    failing["left"] = 2          # the batch fsync and the fsync after cutting it back
    with pytest.raises(DependencyError):
        await log.append({"event": "decision", "lost": True})
    assert not log.healthy
    await log.append({"event": "decision", "i": 1})      # reopens the file, then writes
    assert log.healthy
    await log.close()
    assert [(r["seq"], r["i"]) for r in lines(path)] == [(1, 0), (2, 1)]
    assert verify_files([path]).ok


_KERNEL_FAILURE_CHILD = textwrap.dedent("""
    import asyncio, json, resource, signal, sys
    from pathlib import Path
    from proxy.audit import AuditLog
    from proxy.config import AuditConfig
    from proxy.core.errors import DependencyError
    from proxy.metrics import Metrics

    async def main() -> None:
        path = Path(sys.argv[1])
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # get EFBIG instead of being killed
        metrics = Metrics()
        log = AuditLog(AuditConfig(path=path, fsync=True, group_commit_max_delay=0), metrics)
        await log.open()
        for i in range(3):
            await log.append({"event": "decision", "i": i, "pad": "x" * 100})
        out = {"size_before": path.stat().st_size}
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        # The next record crosses the limit: the kernel writes 50 bytes, then refuses with EFBIG.
        resource.setrlimit(resource.RLIMIT_FSIZE, (out["size_before"] + 50, hard))
        try:
            await log.append({"event": "decision", "i": 3, "pad": "x" * 100})
            out["error"] = None
        except DependencyError as err:
            out["error"] = err.reason
        out["healthy_after_failure"] = log.healthy
        out["size_after_failure"] = path.stat().st_size
        out["failures"] = metrics.registry.get_sample_value("idgate_audit_failures_total")
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        await log.append({"event": "decision", "i": 4})
        out["healthy_after_recovery"] = log.healthy
        await log.close()
        print(json.dumps(out))

    asyncio.run(main())
""")


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


async def test_a_real_kernel_write_failure_is_cut_back_and_recovered(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes the kernel itself fail a write half way (root is not exempt), in a child
    process so the limit cannot touch the test runner's own files."""
    path = tmp_path / "audit.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KERNEL_FAILURE_CHILD, str(path),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(), cwd=REPO)
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode()
    out = json.loads(stdout)
    assert out["error"] == "audit_unavailable"
    assert out["healthy_after_failure"] is False
    assert out["size_after_failure"] == out["size_before"]
    assert out["failures"] == 1
    assert out["healthy_after_recovery"] is True
    assert b"File too large" in stderr          # the writer logged the kernel's reason
    assert [(r["seq"], r["i"]) for r in lines(path)] == [(1, 0), (2, 1), (3, 2), (4, 4)]
    assert verify_files([path]).ok


# --- the file vanishes, the process dies -------------------------------------------------------

async def test_a_removed_active_file_is_recreated_and_the_gap_shows(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = make_log(path, Metrics())
    await log.open()
    for i in range(3):
        await log.append({"event": "decision", "i": i})
    path.unlink()
    await log.append({"event": "decision", "i": 3})
    assert log.healthy
    await log.close()
    assert [r["seq"] for r in lines(path)] == [4]
    report = verify_files([path])
    assert len(report.problems) == 1 and "the chain does not start here" in report.problems[0]


_APPENDING_CHILD = textwrap.dedent("""
    import asyncio, itertools, sys
    from pathlib import Path
    from proxy.audit import AuditLog
    from proxy.config import AuditConfig
    from proxy.metrics import Metrics

    async def main() -> None:
        log = AuditLog(AuditConfig(path=Path(sys.argv[1]), rotate_bytes=16384, fsync=True), Metrics())
        await log.open()
        ids = itertools.count()

        async def appender() -> None:
            while True:
                i = next(ids)
                await log.append({"event": "decision", "id": i})
                sys.stdout.write(f"{i}\\n")
                sys.stdout.flush()

        await asyncio.gather(*(appender() for _ in range(16)))

    asyncio.run(main())
""")


def read_acks(proc: subprocess.Popen[bytes], want: int, timeout: float) -> set[int]:
    assert proc.stdout is not None
    acked: set[int] = set()
    buf = b""
    deadline = time.monotonic() + timeout
    while len(acked) < want:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(acked)} acks before the deadline"
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, "the appending child exited early"
            buf += chunk
            *done, buf = buf.split(b"\n")
            acked.update(int(x) for x in done)
    return acked


async def test_every_acknowledged_record_survives_sigkill_and_the_chain_resumes(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", _APPENDING_CHILD, str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=child_env(), cwd=REPO)
    try:
        acked = await asyncio.to_thread(read_acks, proc, 400, 60)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()

    log = make_log(path, Metrics())
    await log.open()                 # takes over the lock the dead process held, drops any torn tail
    await log.append({"event": "decision", "id": -1})
    await log.close()

    files = segment_files(path)
    assert len(files) > 1            # the child rotated while it ran
    report = verify_files(files)
    assert report.ok, report.problems
    written = [json.loads(line) for f in files for line in f.read_bytes().splitlines()]
    assert acked <= {r["id"] for r in written}
    assert written[-1]["id"] == -1 and written[-1]["seq"] == len(written)
