"""AuditLog: hash-chained records made durable by group commit before `append` returns; a caller's
cancellation never stops or tears a write, and a record that cannot be made durable fails closed.

One writer task takes everything queued (up to _MAX_BATCH), seals it into the chain in order,
appends it with one write on the loop (page cache, microseconds) and hands one fsync to a dedicated
thread (a thread handoff costs ~40 us of CPU here, so there is none when fsync is off); records that
arrive meanwhile form the next batch.  That natural batching is the main mechanism.  With `group_commit_max_delay` > 0 the writer
may also wait for companions until the oldest queued record is that old, but only while waiting
pays: after a wait that gathered nobody (a lone appender, or closed-loop callers who are all in the
batch already) it writes straight away for the next 1, 2, 4, ... _MAX_SKIP batches before trying again.

Rotation, and the retention it sets off (audit.max_segments / max_bytes: plan, announce in the chain,
then delete; retention.py), run in the writer thread after a batch's callers have been answered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.audit.chain import RESERVED, ChainState, seal
from proxy.audit.retention import EVENT as RETENTION_EVENT
from proxy.audit.retention import Retention, RetentionPlan, delete_segments, plan_retention
from proxy.audit.sink import SegmentSink
from proxy.config import AuditConfig
from proxy.core.errors import DependencyError
from proxy.core.reasons import Reason
from proxy.metrics import Metrics

_log = logging.getLogger(__name__)

_MAX_BATCH = 1024
_MAX_PENDING = 10_000
_MAX_SKIP = 1024


@dataclass(slots=True)
class _Pending:
    fields: dict[str, Any]
    enqueued: float                            # loop time, for the append latency metric
    future: asyncio.Future[None] | None        # None for append_nowait


class AuditLog:
    """Callers must never put tokens, secrets or raw claims in a record, and must not mutate a
    record's nested values after handing it over."""

    def __init__(self, config: AuditConfig, metrics: Metrics, *, clock: Callable[[], float] = time.time,
                 write: Callable[[int, bytes], int] = os.write, fsync: Callable[[int], None] = os.fsync,
                 statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
                 max_pending: int = _MAX_PENDING) -> None:
        self._max_delay = config.group_commit_max_delay
        self._metrics = metrics
        self._directory = config.path.parent
        self._statvfs = statvfs
        # At scrape time: one statfs syscall per scrape costs nothing on the write path.
        metrics.audit_free_bytes.set_function(self._free_bytes)
        self._clock = clock
        self._max_pending = max_pending
        self._sink = SegmentSink(config.path, rotate_bytes=config.rotate_bytes, fsync_enabled=config.fsync,
                                 write=write, fsync=fsync, clock=clock)
        self._retention = Retention(config.max_segments, config.max_bytes) \
            if config.max_segments is not None or config.max_bytes is not None else None
        # A deletion whose retention record is queued: the segments go once that record is durable.
        self._retention_due: tuple[RetentionPlan, asyncio.Future[None]] | None = None
        self._maintaining = False     # from a rotation until the retention it sets off is done: for flush()
        self._pending: deque[_Pending] = deque()
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state = ChainState()
        self._writer: asyncio.Task[None] | None = None
        # Its own thread, so audit fsyncs never queue behind STS calls in the default executor.
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._healthy = False
        self._skip_waits = 0          # batches to write without waiting for companions
        self._skip_next = 1           # how many to skip after the next fruitless wait
        self._enqueued = 0            # records ever queued / settled (written or failed): for flush()
        self._settled = 0
        self._progress = asyncio.Event()

    @property
    def healthy(self) -> bool:
        """False before open, after close, and after a failed write until a later write succeeds."""
        return self._healthy

    async def open(self) -> None:
        if self._writer is not None:
            raise RuntimeError("the audit log is already open")
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="idgate-audit")
        try:
            self._state = await loop.run_in_executor(executor, self._sink.open)
        except OSError as exc:
            executor.shutdown(wait=False)
            _log.error("audit log cannot be opened: %s", exc)
            raise DependencyError(f"the audit log cannot be opened: {exc}", reason=Reason.AUDIT_UNAVAILABLE) from exc
        self._executor, self._loop, self._wakeup = executor, loop, asyncio.Event()
        self._closing = False
        self._healthy = True
        self._writer = asyncio.create_task(self._run(), name="idgate-audit-writer")

    async def close(self) -> None:
        """Write everything already queued, then stop the writer and close the file."""
        if self._writer is None or self._executor is None:
            return
        self._closing = True
        assert self._wakeup is not None
        self._wakeup.set()
        await asyncio.shield(self._writer)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._sink.close)
        self._executor.shutdown(wait=False)
        self._writer = self._executor = None
        self._healthy = False

    async def append(self, record: dict[str, Any]) -> None:
        """Return once the record is written and fsynced; DependencyError when it cannot be."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(record, future)
        # A cancelled caller cancels only this future; the record stays queued and is written in its
        # place in the chain regardless (the writer skips futures that are already done).
        await future

    def append_nowait(self, record: dict[str, Any]) -> None:
        """Queue a record (an outcome) without waiting; failures are counted and logged."""
        try:
            self._enqueue(record, None)
        except DependencyError as err:
            _log.error("audit record (event %s) dropped: %s", record.get("event"), err.message)

    async def flush(self) -> None:
        """Wait until every record queued before this call is written or has failed, and a rotation
        it set off is done with its retention (for shutdown and for tests that read the files after
        an `append_nowait`)."""
        target = self._enqueued
        while self._settled < target or (self._maintaining and self._writer is not None
                                         and not self._writer.done()):
            await self._progress.wait()

    def _enqueue(self, record: dict[str, Any], future: asyncio.Future[None] | None) -> None:
        reserved = RESERVED.intersection(record)
        if reserved:
            raise ValueError(f"audit record fields {sorted(reserved)} are set by the audit log")
        if "event" not in record:
            raise ValueError("an audit record needs an event")
        if self._writer is None or self._loop is None or self._wakeup is None or self._closing \
                or self._writer.done():
            problem = "the audit log is not open"
        elif len(self._pending) >= self._max_pending:
            problem = "the audit log is overloaded"
        else:
            self._pending.append(_Pending(dict(record), self._loop.time(), future))
            self._enqueued += 1
            if len(self._pending) == 1 or len(self._pending) >= _MAX_BATCH:
                self._wakeup.set()
            return
        self._metrics.audit_failures.inc()
        raise DependencyError(problem, reason=Reason.AUDIT_UNAVAILABLE)

    async def _run(self) -> None:
        loop, wakeup = asyncio.get_running_loop(), self._wakeup
        assert wakeup is not None
        while True:
            while not self._pending:
                if self._closing:
                    return
                wakeup.clear()
                await wakeup.wait()
            await self._gather_companions(loop, wakeup)
            batch = [self._pending.popleft() for _ in range(min(len(self._pending), _MAX_BATCH))]
            try:
                await self._commit(batch, loop)
            except Exception:
                # The writer must outlive a bug: if it died, every later append would wait forever.
                _log.exception("audit writer failed on a batch of %d record(s)", len(batch))
                self._healthy = False
                self._fail(batch)
            self._settled += len(batch)
            self._signal_progress()
            if self._retention_due is not None and self._retention_due[1].done():
                try:
                    await self._delete_announced(loop)
                except Exception:
                    _log.exception("audit retention failed")     # the writer must outlive it too

    def _signal_progress(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def _gather_companions(self, loop: asyncio.AbstractEventLoop, wakeup: asyncio.Event) -> None:
        if self._max_delay <= 0:
            return
        if self._skip_waits:
            self._skip_waits -= 1
            return
        before = len(self._pending)
        deadline = self._pending[0].enqueued + self._max_delay
        while len(self._pending) < _MAX_BATCH and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await wakeup.wait()
            except TimeoutError:
                break
        if len(self._pending) > before:
            self._skip_next = 1
        else:
            self._skip_waits, self._skip_next = self._skip_next, min(2 * self._skip_next, _MAX_SKIP)

    async def _commit(self, batch: list[_Pending], loop: asyncio.AbstractEventLoop) -> None:
        lines: list[bytes] = []
        sealed: list[_Pending] = []
        state = self._state
        now = self._clock()
        for item in batch:
            try:
                line, next_state = seal(item.fields, state, now)
            except (TypeError, ValueError, RecursionError) as exc:
                # A bad record fails alone and takes no seq, so the chain has no gap.
                self._metrics.audit_failures.inc()
                _log.error("audit record (event %s) is not serializable: %s", item.fields.get("event"), exc)
                if item.future is not None and not item.future.done():
                    item.future.set_exception(exc)
                continue
            lines.append(line)
            sealed.append(item)
            state = next_state
        if not sealed:
            return
        data = b"".join(lines)
        try:
            self._sink.write_batch(data)
            if self._sink.sync_needed:
                await loop.run_in_executor(self._executor, self._sink.sync)
        except OSError as exc:
            _log.error("audit batch of %d record(s) not written: %s", len(sealed), exc)
            self._healthy = False
            self._fail(sealed)
            return
        self._state = state
        self._healthy = True
        self._metrics.audit_bytes_written.inc(len(data))
        self._metrics.audit_batch_records.observe(len(sealed))
        durable = loop.time()
        for item in sealed:
            self._metrics.audit_append_seconds.observe(durable - item.enqueued)
            if item.future is not None and not item.future.done():
                item.future.set_result(None)
        # A batch of retention records alone never rotates: retention then cannot keep itself going.
        if self._sink.needs_rotation() and any(item.fields["event"] != RETENTION_EVENT for item in sealed):
            self._maintaining = True
            try:
                await loop.run_in_executor(self._executor, self._sink.rotate, state.seq)
            except OSError as exc:
                _log.warning("audit rotation failed; retrying after the next batch: %s", exc)
            else:
                await self._announce_retention(loop)
            finally:
                self._maintenance_step_done()

    def _maintenance_step_done(self) -> None:
        if self._retention_due is None:
            self._maintaining = False
            self._signal_progress()

    async def _announce_retention(self, loop: asyncio.AbstractEventLoop) -> None:
        """After a rotation: plan what retention deletes, off the loop, and queue the record that
        announces it; the deletion waits until that record is durable (write-ahead, retention.py)."""
        if self._retention is None or self._retention_due is not None or self._closing:
            return
        try:
            plan = await loop.run_in_executor(self._executor, plan_retention, self._sink.path, self._retention)
        except OSError as exc:
            _log.warning("audit retention skipped; retrying after the next rotation: %s", exc)
            return
        if plan is None:
            return
        future: asyncio.Future[None] = loop.create_future()
        try:
            self._enqueue(plan.record(), future)
        except DependencyError:
            return                       # overloaded: the next rotation plans again
        self._retention_due = (plan, future)

    async def _delete_announced(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._retention_due is not None
        (plan, future), self._retention_due = self._retention_due, None
        try:
            if future.cancelled() or future.exception() is not None:
                return                   # not on the chain: delete nothing (the next rotation plans again)
            deleted = await loop.run_in_executor(self._executor, delete_segments, plan, self._sink.sync_directory)
            self._metrics.audit_segments_deleted.inc(deleted)
            _log.info("audit retention deleted %d segment(s) through seq %d", deleted, plan.through.seq)
            # Rotations while this deletion was due planned nothing (one deletion at a time): plan again now.
            await self._announce_retention(loop)
        finally:
            self._maintenance_step_done()

    def _free_bytes(self) -> float:
        try:
            st = self._statvfs(self._directory)
        except OSError:
            return float("nan")
        return float(st.f_bavail * st.f_frsize)

    def _fail(self, items: list[_Pending]) -> None:
        self._metrics.audit_failures.inc(len(items))
        for item in items:
            if item.future is not None and not item.future.done():
                item.future.set_exception(DependencyError("the audit log is unavailable", reason=Reason.AUDIT_UNAVAILABLE))

