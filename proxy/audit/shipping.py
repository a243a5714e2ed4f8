"""The audit shipper: a task of its own that ships the local chain to CloudWatch Logs and S3 and signs
anchors, never on the request path (a failed or slow shipment never delays a request; the audit log
stays the only thing a request waits for).

Each round, on the shipper's own thread:
  CloudWatch  read the records after the sink's position up to the last durable one (ChainTail checks
              every hash and link), send them in PutLogEvents batches, and after each acknowledged
              batch write its refused events to the gap ledger and then the position (checkpoint):
              temp file, fsync, rename.  A crash between an acknowledgement and the checkpoint sends
              that batch again: every record carries instance and seq, so a consumer drops the copy.
  S3          upload each rotated segment not yet shipped, checked end to end, never overwriting.
  anchors     every anchors.interval while records keep coming, after each rotation and at shutdown,
              sign the last durable record; append it to the local anchors file, then store it in
              every sink (S3 object, CloudWatch stream `<instance>.anchors`).
A sink that fails backs off (exponential, with jitter, at most a minute: ship_progress.py) and resumes
where its checkpoint says.  A broken local chain, or other bytes under a name already shipped, halts that sink:
it is logged, counted (idgate_audit_ship_halted) and retention keeps every segment it has not shipped.

Retention deletes a rotated segment only once every sink holds it and an anchor stored in every sink
vouches for a seq at or after its last (`may_delete`, called from the audit log's file thread).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from proxy.audit.anchors import Anchor, AnchorSigner
from proxy.audit.aws_json import ShipError
from proxy.audit.chain import ChainState
from proxy.audit.cloudwatch import CloudWatchSink, Rejected, plan_batches
from proxy.audit.file_thread import FileThread
from proxy.audit.log import AuditLog
from proxy.audit.s3_sink import S3Sink, check_segment
from proxy.audit.ship_progress import SinkProgress, loop_time
from proxy.audit.ship_state import ShipState, load_ship_state
from proxy.audit.sink_clients import Sinks, build_sinks
from proxy.audit.sink import segment_files
from proxy.audit.state import StateError, append_line, write_state
from proxy.audit.tail import ChainBreak, ChainTail, TailRecord, first_seq, rotated_last_seq
from proxy.config import AuditConfig
from proxy.core.errors import ConfigError, ConfigProblem
from proxy.metrics import Metrics

_log = logging.getLogger("idgate.audit.shipping")
T = TypeVar("T")

MAX_ROUND_RECORDS = 10_000
MAX_ROUND_BYTES = 4 << 20
CLOSE_TIMEOUT = 10.0                 # shutdown waits at most this long for the last shipment


SinkFactory = Callable[[AuditConfig, str], Sinks]


class Shipper:
    def __init__(self, audit: AuditLog, config: AuditConfig, region: str, metrics: Metrics, signer: AnchorSigner,
                 *, sinks: SinkFactory = build_sinks, clock: Callable[[], float] = time.time) -> None:
        assert config.shipping is not None and config.instance is not None
        self._audit, self._config, self._shipping = audit, config, config.shipping
        self._region, self._metrics, self._signer = region, metrics, signer
        self._instance = config.instance
        self._make_sinks, self._clock = sinks, clock
        self._dir = self._shipping.state_dir or config.path.with_name(config.path.name + ".shipping")
        self._tail = ChainTail(config.path)
        self._sinks: Sinks | None = None
        self._prepared = False
        self._cw = SinkProgress("cloudwatch") if self._shipping.cloudwatch is not None else None
        self._s3 = SinkProgress("s3") if self._shipping.s3 is not None else None
        self._state = ShipState()
        self._pending: list[Anchor] = []          # signed, not yet in every sink
        self._refused: list[tuple[int, int]] = []   # seq ranges CloudWatch refused for good (the gap ledger)
        self._rotations: list[ChainState] = []
        self._next_anchor = 0.0                   # loop time the next periodic anchor is due (0: the first records)
        self._wake = asyncio.Event()
        self._closing = False
        self._thread: FileThread | None = None
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._thread = FileThread(loop, "idgate-ship")
        try:
            self._state = await self._thread.run(partial(load_ship_state, self._dir))
        except StateError as exc:
            self._thread.stop()
            raise ConfigError([ConfigProblem(str(self._dir), None, f"audit shipping state: {exc}")]) from exc
        self._refused = list(self._state.refused)
        for sink in self._all_sinks():
            sink.seq = self._state.seq(sink.name)
            sink.anchor = self._state.stored_anchor(sink.name)
        self._pending = [a for a in self._state.pending if self._unstored(a)]
        self._audit.on_rotation(self._rotated)
        self._audit.guard_retention(self.may_delete)
        self._task = loop.create_task(self._run(), name="audit-shipping")

    async def close(self) -> None:
        """After the audit log is closed (nothing more comes): ship what is left, sign the last record,
        store the anchor; all of it, the round in flight included, within CLOSE_TIMEOUT."""
        if self._task is None or self._thread is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_TIMEOUT
        self._closing = True
        self._wake.set()
        done, _ = await asyncio.wait({self._task}, timeout=CLOSE_TIMEOUT)
        if self._s3 is not None and done:
            await self._audit.rotate()        # the live segment too: after a clean stop S3 holds every record
        await self._audit.close()
        if not done:
            # A sink call that never ends (an endpoint that drips its answer): leave it to its thread.
            self._task.cancel()
            _log.warning("audit shipping: a sink call did not end within %.0f s; stopping without the last "
                         "shipment (it goes after the restart)", CLOSE_TIMEOUT)
        else:
            try:
                await asyncio.wait_for(self._last_rounds(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                _log.warning("audit shipping: stopped with records or anchors not yet shipped; they go after "
                             "the restart")
        self._thread.stop()
        self._task = self._thread = None

    async def _last_rounds(self) -> None:
        for sink in self._all_sinks():
            sink.retry_at = 0.0
        while await self._round(final=True):
            pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                worked = await self._round(final=False)
            except Exception:
                _log.exception("audit shipping round failed")
                worked = False
            if worked or self._closing:
                continue
            wait = self._shipping.interval
            retry = [s.retry_at - loop.time() for s in self._all_sinks() if s.retry_at and not s.halted]
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, min([wait, *retry])))
            except TimeoutError:
                pass

    def _rotated(self, state: ChainState) -> None:
        self._rotations.append(state)
        self._wake.set()

    # --- one round --------------------------------------------------------------------------------

    async def _round(self, *, final: bool) -> bool:
        """Ship, anchor and store anchors once; whether there is more to do right away."""
        durable = self._audit.durable
        if self._sinks is None and not await self._build_sinks():
            return False
        more = False
        # Each step on its own: a bug or a surprise in one sink's step fails that sink (with backoff),
        # never the other sink or the anchors.
        if self._cw is not None:
            more |= await self._guarded(self._cw, self._ship_records(self._cw, durable))
        if self._s3 is not None:
            more |= await self._guarded(self._s3, self._ship_segment(self._s3))
        try:
            await self._anchor(durable, final)
            await self._store_anchors()
        except Exception:
            _log.exception("audit shipping: anchoring failed; trying again next round")
        self._report_lag(durable)
        return more

    async def _guarded(self, sink: SinkProgress, step: Coroutine[Any, Any, bool]) -> bool:
        try:
            return await step
        except Exception as exc:
            _log.exception("audit shipping to %s: unexpected failure", sink.name)
            sink.failed(loop_time(), self._metrics, ShipError("InternalError", repr(exc)[:200]))
            return False

    async def _build_sinks(self) -> bool:
        """The AWS clients, once (building them costs tens of milliseconds); retried with backoff."""
        if not any(sink.may_try(loop_time()) for sink in self._all_sinks()):
            return False
        try:
            self._sinks = await self._run_on_thread(lambda: self._make_sinks(self._config, self._region))
        except ShipError as exc:
            for sink in self._all_sinks():
                sink.failed(loop_time(), self._metrics, exc)
            return False
        return True

    async def _prepare_cloudwatch(self, sink: SinkProgress) -> bool:
        """The log group and streams, before the first call and after one went missing; a failure
        backs off like any other (and never holds S3 or the anchors)."""
        if self._prepared:
            return True
        assert self._sinks is not None and self._sinks.cloudwatch is not None
        try:
            await self._run_on_thread(self._sinks.cloudwatch.prepare)
        except ShipError as exc:
            sink.failed(loop_time(), self._metrics, exc)
            return False
        self._prepared = True
        return True

    async def _ship_records(self, sink: SinkProgress, durable: ChainState) -> bool:
        sink.note_lag(loop_time(), durable.seq - sink.seq)
        if not sink.may_try(loop_time()) or sink.seq >= durable.seq or not await self._prepare_cloudwatch(sink):
            return False
        assert self._sinks is not None and self._sinks.cloudwatch is not None
        cloudwatch = self._sinks.cloudwatch
        position = self._state.cloudwatch_position
        try:
            records = await self._run_on_thread(lambda: self._tail.read(
                position, durable.seq, max_records=MAX_ROUND_RECORDS, max_bytes=MAX_ROUND_BYTES))
        except ChainBreak as exc:
            sink.halt(self._metrics, f"the local chain is broken at {exc}")
            return False
        batches, too_large = plan_batches(records, self._state.cloudwatch_floor_ms, int(self._clock() * 1000))
        if too_large:
            await self._run_on_thread(partial(self._ledger, sink, too_large, "too_large"))
        for batch in batches:
            try:
                rejected = await self._run_on_thread(partial(cloudwatch.put, batch))
            except ShipError as exc:
                if exc.code == "ResourceNotFoundException":
                    self._prepared = False          # the group or stream went away: create them again
                sink.failed(loop_time(), self._metrics, exc)
                return False
            for gap in rejected:                    # the ledger first, then the checkpoint past them
                await self._run_on_thread(partial(self._ledger, sink, list(batch.records[gap.first:gap.last + 1]),
                                                  gap.reason))
            state = self._state.with_cloudwatch(batch.records[-1].position, batch.timestamps[-1])
            await self._save(sink, state)
            sink.succeeded(self._metrics, len(batch.records))
        if records and records[-1].seq > sink.seq:
            # What is left after the last batch was too large for any event, and is in the ledger now.
            await self._save(sink, self._state.with_cloudwatch(records[-1].position, self._state.cloudwatch_floor_ms))
        sink.note_lag(loop_time(), durable.seq - sink.seq)
        return bool(records) and sink.seq < durable.seq

    async def _save(self, sink: SinkProgress, state: ShipState) -> None:
        """Make the sink's part of `state` durable, then take it as the shipper's."""
        name, body = ("cloudwatch.json", state.cloudwatch_json()) if sink.name == "cloudwatch" \
            else ("s3.json", state.s3_json())
        await self._run_on_thread(partial(write_state, self._dir / name, body))
        self._state = state
        sink.seq = state.seq(sink.name)
        sink.anchor = state.stored_anchor(sink.name)

    async def _ship_segment(self, sink: SinkProgress) -> bool:
        if not sink.may_try(loop_time()):
            return False
        assert self._sinks is not None and self._sinks.s3 is not None
        s3 = self._sinks.s3
        waiting = await self._run_on_thread(self._segments_to_upload)
        sink.note_lag(loop_time(), (rotated_last_seq(waiting[-1]) or 0) - sink.seq if waiting else 0)
        if not waiting:
            return False
        after = self._state.s3_state
        try:
            checked = await self._run_on_thread(partial(check_segment, waiting[0], after))
            await self._run_on_thread(partial(s3.upload_segment, checked))
        except ChainBreak as exc:
            sink.halt(self._metrics, f"the local chain is broken at {exc}")
            return False
        except ShipError as exc:
            if exc.code == "Conflict":
                sink.halt(self._metrics, exc.message)
            else:
                sink.failed(loop_time(), self._metrics, exc)
            return False
        except OSError as exc:
            sink.failed(loop_time(), self._metrics, ShipError("FileError", str(exc)))
            return False
        await self._save(sink, self._state.with_s3(checked.last, checked.path.name))
        sink.succeeded(self._metrics, checked.last.seq - checked.first + 1)
        return len(waiting) > 1

    def _segments_to_upload(self) -> list[Path]:
        seq = self._state.s3_state.seq if self._state.s3_state else 0
        return [p for p in segment_files(self._config.path) if (rotated_last_seq(p) or 0) > seq]

    # --- anchors ----------------------------------------------------------------------------------

    async def _anchor(self, durable: ChainState, final: bool) -> None:
        """Sign what is due: the last record of each rotated segment, and the last durable record when
        records came since the last anchor, at most once an interval (the first as soon as there is one)
        and at shutdown."""
        loop = asyncio.get_running_loop()
        due, self._rotations = self._rotations, []
        last = self._state.last_anchor
        if (final or loop.time() >= self._next_anchor) and durable.seq > (last.seq if last is not None else 0):
            due.append(durable)
            self._next_anchor = loop.time() + self._shipping.anchors.interval
        for state in due:
            last = self._state.last_anchor
            if state.seq == 0 or (last is not None and state.seq <= last.seq):
                continue
            number = last.number + 1 if last is not None else 1
            anchor = self._signer.sign(self._instance, number, state, self._clock(),
                                       last.signature if last is not None else "")
            await self._run_on_thread(partial(append_line, self._dir / "anchors.jsonl",
                                              anchor.token.encode("ascii") + b"\n"))
            self._state = self._state.with_anchor(anchor)
            self._pending.append(anchor)
            self._metrics.audit_anchors.inc()

    async def _store_anchors(self) -> None:
        assert self._sinks is not None
        for sink, store in ((self._cw, self._sinks.cloudwatch), (self._s3, self._sinks.s3)):
            if sink is None or store is None or not sink.may_try(loop_time()):
                continue
            if isinstance(store, CloudWatchSink) and not await self._prepare_cloudwatch(sink):
                continue
            for anchor in [a for a in self._pending if sink.anchor is None or a.number > sink.anchor.number]:
                try:
                    if isinstance(store, S3Sink):
                        await self._run_on_thread(partial(store.put_anchor, anchor.number, anchor.token.encode("ascii")))
                        state = self._state
                    else:
                        stamp = max(int(self._clock() * 1000), self._state.anchor_floor_ms)
                        await self._run_on_thread(partial(store.put_anchor, anchor.token.encode("ascii"), stamp))
                        state = self._state.with_anchor_floor(stamp)
                except ShipError as exc:
                    if exc.code == "Conflict":
                        sink.halt(self._metrics, exc)
                    else:
                        sink.failed(loop_time(), self._metrics, exc)
                    break
                await self._save(sink, state.with_stored_anchor(sink.name, anchor))
        self._pending = [a for a in self._pending if self._unstored(a)]

    def _unstored(self, anchor: Anchor) -> bool:
        return any(s.anchor is None or s.anchor.number < anchor.number for s in self._all_sinks())

    # --- retention, readiness, lag ------------------------------------------------------------------

    def may_delete(self, segment: Path) -> bool:
        """Whether retention may delete a rotated segment: every sink holds its records, and an anchor
        every sink holds vouches for its last record or a later one."""
        last = rotated_last_seq(segment)
        if last is None:
            return False
        if not all(sink.seq >= last and sink.anchor is not None and sink.anchor.seq >= last
                   for sink in self._all_sinks()):
            return False
        if self._s3 is not None or not self._refused:
            return True                  # S3 holds the whole segment, whatever CloudWatch refused
        # CloudWatch alone: records it refused are in no sink; their segment is their only copy.
        first = first_seq(segment)
        return first is not None and not any(a <= last and b >= first for a, b in self._refused)

    def status(self) -> dict[str, object]:
        """For /readyz: each sink's lag, and whether shipping counts as healthy (not halted, and
        within max_lag_seconds when that is configured)."""
        loop_now = asyncio.get_running_loop().time()
        bound = self._shipping.max_lag_seconds
        sinks = {}
        ok = True
        for sink in self._all_sinks():
            lag = loop_now - sink.behind_since if sink.behind_since is not None else 0.0
            healthy = sink.halted is None and (bound is None or lag <= bound)
            ok = ok and healthy
            # CloudWatch's lag is known now; S3's as of its last listing (a rotation is a file operation).
            records = max(0, self._audit.durable.seq - sink.seq) if sink is self._cw else sink.lag_records
            sinks[sink.name] = {"lag_records": records, "lag_seconds": round(lag, 3),
                                **({"halted": sink.halted} if sink.halted else {})}
        return {"ok": ok, "sinks": sinks}

    def _report_lag(self, durable: ChainState) -> None:
        now = asyncio.get_running_loop().time()
        for sink in self._all_sinks():
            lag = now - sink.behind_since if sink.behind_since is not None else 0.0
            self._metrics.audit_ship_lag_records.labels(sink.name).set(sink.lag_records)
            self._metrics.audit_ship_lag_seconds.labels(sink.name).set(lag)

    def _ledger(self, sink: SinkProgress, records: list[TailRecord], reason: str) -> None:
        """On the thread: refused records, as contiguous seq ranges, to the gap ledger (durable), the metric
        and the log.  They stay in the local segments, and in S3 when it is configured."""
        ranges: list[list[int]] = []
        for record in records:
            seq = record.seq
            if ranges and ranges[-1][1] == seq - 1:
                ranges[-1][1] = seq
            else:
                ranges.append([seq, seq])
        for first, last in ranges:
            self._refused.append((first, last))
            entry = {"time": self._clock(), "instance": self._instance, "sink": sink.name, "first_seq": first,
                     "last_seq": last, "reason": reason}
            append_line(self._dir / "gaps.jsonl", json.dumps(entry, sort_keys=True).encode("ascii") + b"\n")
            _log.warning("audit shipping: %s refused records seq %d..%d as %s (gap ledger: %s)",
                         sink.name, first, last, reason, self._dir / "gaps.jsonl")
        self._metrics.audit_ship_gaps.labels(sink.name, reason).inc(len(records))

    def _all_sinks(self) -> list[SinkProgress]:
        return [s for s in (self._cw, self._s3) if s is not None]

    async def _run_on_thread(self, work: Callable[[], T]) -> T:
        assert self._thread is not None
        return await self._thread.run(work)


