"""AuditLog: hash-chained records made durable by group commit before `append` returns; a caller's
cancellation never stops or tears a write, and a record that cannot be made durable fails closed.

Group commit waits only while an fsync is in flight.  A record queued while the log is idle starts
a batch in the next loop iteration (so the records queued in one iteration share it); the batch is
everything queued (up to _MAX_BATCH), sealed into the chain in order on the loop, then written and
fsynced in one call on the log's file thread, which reports back with one call_soon_threadsafe.
Whatever arrives meanwhile forms the next batch, started as soon as that report comes.  With fsync
off the write happens on the loop and no thread is involved.  Awaiting callers each hold a future
(the least a task can wait on, and what lets one caller's cancellation leave the others alone);
`append_nowait` records hold none.

With `group_commit_max_delay` > 0 (fewer fsyncs for more latency, on disks that charge per
operation) a batch may also wait for companions until its oldest record is that old, but only while
waiting pays: after a wait that gathered nobody it writes straight away for the next 1, 2, 4, ...
_MAX_SKIP batches before trying again.

Rotation, and the retention it sets off (audit.max_segments / max_bytes: plan, announce in the chain,
then delete; retention.py), run on the file thread after a batch's callers have been answered and
before the next batch starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from proxy.audit.chain import ChainState, SealedBatch, caller_fields_problem, unsealed
from proxy.audit.file_thread import FileThread
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

# A queued record: its fields as `unsealed` made them, when it was queued (loop time, for the append
# latency metric), and the future its caller awaits (None for append_nowait).  A tuple: one is built
# per record on the hot path.
_Pending = tuple[dict[str, Any], float, "asyncio.Future[None] | None"]


# What the operator can do about the everyday reasons the file cannot be taken at start.
_OPEN_FIXES = {
    errno.EWOULDBLOCK: "; each idgate (each --workers worker has its own) needs its own audit.path: stop the other "
                       "idgate or choose another audit.path",
    errno.EACCES: "; give the user idgate runs as write access to audit.path's directory, or choose another",
}


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
        self._instance = config.instance
        self._sink = SegmentSink(config.path, rotate_bytes=config.rotate_bytes, fsync_enabled=config.fsync,
                                 write=write, fsync=fsync, clock=clock)
        self._rotate_seconds = config.rotate_seconds
        self._rotation_timer: asyncio.TimerHandle | None = None   # rotate_seconds after a segment's first batch
        self._rotate_due = False      # the timer fired: rotate after the batch in flight (or now, when idle)
        self._rotation_listeners: list[Callable[[ChainState], None]] = []
        self._retention = Retention(config.max_segments, config.max_bytes) \
            if config.max_segments is not None or config.max_bytes is not None else None
        # A deletion whose retention record is queued: the segments go once that record is durable.
        self._retention_due: tuple[RetentionPlan, asyncio.Future[None]] | None = None
        self._maintaining = False     # from a rotation until the retention it sets off is done: for flush()
        self._pending: deque[_Pending] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: FileThread | None = None
        self._state = ChainState()
        # From the moment a batch is scheduled until no batch, wait or maintenance is left: a record
        # queued while busy is picked up by what runs, one queued while idle schedules a batch.
        self._busy = False
        self._maintenance: asyncio.Task[None] | None = None
        self._close_lock = asyncio.Lock()
        self._companion_timer: asyncio.Handle | None = None   # the wait's end, or its cut short
        self._waited_with = 0         # records queued when the companion wait began (0: not waiting)
        self._skip_waits = 0          # batches to write without waiting for companions
        self._skip_next = 1           # how many to skip after the next fruitless wait
        self._closing = False
        self._healthy = False
        self._enqueued = 0            # records ever queued / settled (written or failed): for flush()
        self._settled = 0
        self._progress: list[asyncio.Future[None]] = []     # flush() and close() waiting for a batch

    @property
    def durable(self) -> ChainState:
        """The chain's last durable record: what a reader of the files may take as final (a batch that
        is written but not yet fsynced may still be cut back)."""
        return self._state

    @property
    def path(self) -> Path:
        return self._sink.path

    async def rotate(self) -> None:
        """Rotate the live segment after what is queued, when it holds a record (the shipper, before a clean
        stop, so that S3 gets every record)."""
        if self._thread is None or self._closing or not self._sink.holds_records():
            return
        if self._busy:
            self._rotate_due = True          # the batch in flight rotates when it comes back
        else:
            self._rotation_timer_fired()
        await self.flush()

    def guard_retention(self, may_delete: Callable[[Path], bool]) -> None:
        """Retention deletes a rotated segment only when `may_delete` says so (audit shipping: once it is
        shipped and anchored); called on the file thread."""
        if self._retention is not None:
            self._retention = dataclasses.replace(self._retention, may_delete=may_delete)

    def on_rotation(self, listener: Callable[[ChainState], None]) -> None:
        """Call `listener` on the loop after each rotation, with the last record of the rotated segment."""
        self._rotation_listeners.append(listener)

    @property
    def healthy(self) -> bool:
        """False before open, after close, and after a failed write until a later write succeeds."""
        return self._healthy

    async def open(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the audit log is already open")
        loop = asyncio.get_running_loop()
        # Its own thread, so audit fsyncs never queue behind STS calls in the default executor.
        thread = FileThread(loop, "idgate-audit")
        try:
            self._state = await thread.run(self._sink.open)
        except OSError as exc:
            thread.stop()
            _log.error("audit log cannot be opened: %s", exc)
            fix = _OPEN_FIXES.get(exc.errno or 0, "")
            raise DependencyError(f"the audit log cannot be opened: {exc}{fix}",
                                  reason=Reason.AUDIT_UNAVAILABLE) from exc
        self._loop, self._thread = loop, thread
        self._closing = False
        self._healthy = True

    async def close(self) -> None:
        """Write everything already queued, then stop the file thread and close the file."""
        if self._thread is None:
            return
        async with self._close_lock:          # a second close() waits for the first, then finds it done
            if self._thread is None:
                return
            self._closing = True
            self._stop_waiting_for_companions()
            self._cancel_rotation_timer()
            while self._busy:
                await self._next_progress()
            await self._thread.run(self._sink.close)
            self._thread.stop()
            self._thread = None
            self._healthy = False

    async def append(self, record: dict[str, Any]) -> int:
        """The record's seq, once it is written and fsynced; DependencyError when it cannot be."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queued = self._enqueue(record, future)
        # A cancelled caller cancels only this future; the record stays queued and is written in its
        # place in the chain regardless (the writer skips futures that are already done).
        await future
        return int(queued["seq"])       # sealed (seq assigned) before its future was answered

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
        while self._settled < target or (self._maintaining and self._thread is not None):
            await self._next_progress()

    def _enqueue(self, record: dict[str, Any], future: asyncio.Future[None] | None) -> dict[str, Any]:
        if (problem := caller_fields_problem(record)) is not None:
            raise ValueError(problem)
        if "event" not in record:
            raise ValueError("an audit record needs an event")
        if self._thread is None or self._loop is None or self._closing:
            problem = "the audit log is not open"
        elif len(self._pending) >= self._max_pending:
            problem = "the audit log is overloaded"
        else:
            queued = unsealed(record, self._instance)
            self._pending.append((queued, self._loop.time(), future))
            self._enqueued += 1
            if not self._busy:
                self._busy = True
                self._loop.call_soon(self._commit)
            elif len(self._pending) >= _MAX_BATCH:
                self._stop_waiting_for_companions()
            return queued
        self._metrics.audit_failures.inc()
        raise DependencyError(problem, reason=Reason.AUDIT_UNAVAILABLE)

    # --- the batch cycle: _commit → (file thread) → _written → _commit ... all on the loop ---------

    def _commit(self) -> None:
        """Seal and write the next batch, or go idle when nothing is queued."""
        self._companion_timer = None
        if not self._pending:
            self._busy = False
            self._signal_progress()
            return
        if self._max_delay > 0 and self._wait_for_companions():
            return
        batch = [self._pending.popleft() for _ in range(min(len(self._pending), _MAX_BATCH))]
        assert self._thread is not None and self._loop is not None
        sealed: list[_Pending] = []
        state, data = self._state, b""
        error: BaseException | None = None
        try:
            sealed, sealing = self._seal(batch)
        except Exception as exc:
            # The batch as a whole cannot be sealed (its timestamp, say): none of it was answered, so
            # all of it fails, closed.
            self._loop.call_soon(self._written, batch, batch, state, data, None, exc)
            return
        try:
            if sealed:
                state, data = sealing.state, sealing.data()
                if self._sink.fsync_enabled:
                    self._thread.submit(partial(self._sink.append, data),
                                        partial(self._written, batch, sealed, state, data))
                    return
                self._sink.append(data)
        except Exception as exc:
            error = exc
        # Answered from the loop's next iteration, as the file thread would: answering from here,
        # the batch after it would start inside this call.
        self._loop.call_soon(self._written, batch, sealed, state, data, None, error)

    def _seal(self, batch: list[_Pending]) -> tuple[list[_Pending], SealedBatch]:
        sealing = SealedBatch(self._state, self._clock())
        sealed: list[_Pending] = []
        for item in batch:
            try:
                sealing.add(item[0])
            except (TypeError, ValueError, RecursionError) as exc:
                # A bad record fails alone and takes no seq, so the chain has no gap.
                self._metrics.audit_failures.inc()
                _log.error("audit record (event %s) is not serializable: %s", item[0].get("event"), exc)
                future = item[2]
                if future is not None and not future.done():
                    future.set_exception(exc)
                continue
            sealed.append(item)
        return sealed, sealing

    def _written(self, batch: list[_Pending], sealed: list[_Pending], state: ChainState, data: bytes,
                 _result: None, error: BaseException | None) -> None:
        """A batch's write came back: answer its callers, then maintain or start the next batch."""
        rotate = False
        try:
            if isinstance(error, OSError):
                _log.error("audit batch of %d record(s) not written: %s", len(sealed), error)
                self._healthy = False
                self._fail(sealed)
            elif error is not None:
                # The writer must outlive a bug: if it stopped, every later append would wait forever.
                _log.error("audit writer failed on a batch of %d record(s)", len(batch), exc_info=error)
                self._healthy = False
                self._fail(sealed)          # a record that failed alone while sealing was answered then
            elif sealed:
                self._durable(sealed, state, data)
                # A batch of retention records alone never rotates: retention then cannot keep itself going.
                records = any(item[0]["event"] != RETENTION_EVENT for item in sealed)
                rotate = records and (self._sink.needs_rotation() or self._rotate_due)
                if records and not rotate:
                    self._arm_rotation_timer()
        except Exception:
            _log.exception("audit writer failed answering a batch of %d record(s)", len(batch))
        self._settled += len(batch)
        deletion_due = self._retention_due is not None and self._retention_due[1].done()
        if rotate or deletion_due:
            self._maintaining = self._maintaining or rotate     # before flush() hears of this batch
            self._maintenance = asyncio.ensure_future(self._maintain(rotate))
            # A callback, not the task's own `finally`: it runs even when the task is cancelled
            # before its first step, so the batch cycle always goes on.
            self._maintenance.add_done_callback(self._maintained)
        self._signal_progress()
        if self._maintenance is None:
            self._commit_or_idle()

    def _durable(self, sealed: list[_Pending], state: ChainState, data: bytes) -> None:
        self._state = state
        self._healthy = True
        assert self._loop is not None
        durable = self._loop.time()
        for _, _, future in sealed:
            if future is not None and not future.done():
                future.set_result(None)
        metrics = self._metrics
        metrics.audit_bytes_written.inc(len(data))
        metrics.audit_batch_records.observe(len(sealed))
        observe = metrics.audit_append_seconds.observe      # a LoopHistogram: cheap per record
        for _, enqueued, _ in sealed:
            observe(durable - enqueued)

    def _commit_or_idle(self) -> None:
        """Straight on with what arrived during the write (no wait), or idle until a record comes."""
        if self._pending:
            self._commit()
        else:
            self._busy = False
            self._signal_progress()

    def _wait_for_companions(self) -> bool:
        """With group_commit_max_delay: whether to hold the batch back (a timer then starts it)."""
        assert self._loop is not None
        if self._waited_with:                       # the wait is over
            if len(self._pending) > self._waited_with:
                self._skip_next = 1
            else:
                self._skip_waits, self._skip_next = self._skip_next, min(2 * self._skip_next, _MAX_SKIP)
            self._waited_with = 0
            return False
        if self._skip_waits:
            self._skip_waits -= 1
            return False
        deadline = self._pending[0][1] + self._max_delay
        if self._closing or len(self._pending) >= _MAX_BATCH or deadline <= self._loop.time():
            return False
        self._waited_with = len(self._pending)
        self._companion_timer = self._loop.call_at(deadline, self._commit)
        return True

    def _stop_waiting_for_companions(self) -> None:
        if self._companion_timer is not None and self._loop is not None:
            self._companion_timer.cancel()
            self._companion_timer = self._loop.call_soon(self._commit)

    def _signal_progress(self) -> None:
        waiters, self._progress = self._progress, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _next_progress(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._progress.append(waiter)
        await waiter

    # --- rotation and retention, between batches -------------------------------------------------

    async def _maintain(self, rotate: bool) -> None:
        assert self._thread is not None
        try:
            if rotate:
                try:
                    self._rotate_due = False
                    self._cancel_rotation_timer()
                    await self._thread.run(partial(self._sink.rotate, self._state.seq))
                except OSError as exc:
                    self._rotate_due = True
                    _log.warning("audit rotation failed; retrying after the next batch: %s", exc)
                else:
                    self._tell_rotation(self._state)
                    await self._announce_retention()
                finally:
                    self._maintenance_step_done()
            if self._retention_due is not None and self._retention_due[1].done():
                await self._delete_announced()
        except Exception:
            _log.exception("audit retention failed")     # the writer must outlive it too

    def _tell_rotation(self, state: ChainState) -> None:
        for listener in self._rotation_listeners:
            try:
                listener(state)
            except Exception:
                _log.exception("audit rotation listener failed")

    def _arm_rotation_timer(self) -> None:
        """With rotate_seconds: a segment that got its first records rotates that much later, even if
        no record comes after them (a quiet segment must still reach S3)."""
        if self._rotate_seconds is None or self._rotation_timer is not None or self._closing:
            return
        assert self._loop is not None
        self._rotation_timer = self._loop.call_later(self._rotate_seconds, self._rotation_timer_fired)

    def _cancel_rotation_timer(self) -> None:
        if self._rotation_timer is not None:
            self._rotation_timer.cancel()
            self._rotation_timer = None

    def _rotation_timer_fired(self) -> None:
        self._rotation_timer = None
        self._rotate_due = True
        if self._busy or self._closing:
            return                       # the batch in flight rotates when it comes back
        self._busy = self._maintaining = True
        self._maintenance = asyncio.ensure_future(self._maintain(True))
        self._maintenance.add_done_callback(self._maintained)

    def _maintained(self, task: asyncio.Task[None]) -> None:
        self._maintenance = None
        if not task.cancelled():
            self._commit_or_idle()
            return
        # Cancelled (before it started, or mid-way): a rotation it handed the file thread may still be
        # running, so the next batch starts only once the thread has finished it (its jobs run in order).
        self._maintaining = False
        self._signal_progress()
        assert self._thread is not None
        self._thread.submit(lambda: None, lambda _result, _error: self._commit_or_idle())

    def _maintenance_step_done(self) -> None:
        if self._retention_due is None:
            self._maintaining = False
            self._signal_progress()

    async def _announce_retention(self) -> None:
        """After a rotation: plan what retention deletes, off the loop, and queue the record that
        announces it; the deletion waits until that record is durable (write-ahead, retention.py)."""
        if self._retention is None or self._retention_due is not None or self._closing:
            return
        assert self._thread is not None and self._loop is not None
        try:
            plan = await self._thread.run(partial(plan_retention, self._sink.path, self._retention))
        except OSError as exc:
            _log.warning("audit retention skipped; retrying after the next rotation: %s", exc)
            return
        if plan is None:
            return
        future: asyncio.Future[None] = self._loop.create_future()
        try:
            self._enqueue(plan.record(), future)
        except DependencyError:
            return                       # overloaded: the next rotation plans again
        self._retention_due = (plan, future)

    async def _delete_announced(self) -> None:
        assert self._retention_due is not None and self._thread is not None
        (plan, future), self._retention_due = self._retention_due, None
        try:
            if future.cancelled() or future.exception() is not None:
                return                   # not on the chain: delete nothing (the next rotation plans again)
            deleted = await self._thread.run(partial(delete_segments, plan, self._sink.sync_directory))
            self._metrics.audit_segments_deleted.inc(deleted)
            _log.info("audit retention deleted %d segment(s) through seq %d", deleted, plan.through.seq)
            # Rotations while this deletion was due planned nothing (one deletion at a time): plan again now.
            await self._announce_retention()
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
        for _, _, future in items:
            if future is not None and not future.done():
                future.set_exception(DependencyError("the audit log is unavailable", reason=Reason.AUDIT_UNAVAILABLE))
