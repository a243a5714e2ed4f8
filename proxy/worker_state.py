"""What an `idgate serve --workers N` supervisor shares with its workers: for each worker index, the pid
serving there (0 while that worker is missing) and how often it was restarted.  A leaf module.

The table lives in an anonymous memory file (memfd) the supervisor maps and hands to every worker by
descriptor (`pass_fds`): nothing on disk to clean up or for another user to open.  A slot has one writer
at a time, so no lock: its worker marks it once it serves and unmarks it when it stops, and the supervisor
writes it only while no process holds that index (unmarking the pid it reaped, counting the restart before
it starts the next one)."""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

_MAGIC = b"idgatew1"
_HEADER = struct.Struct("<8sQ")         # magic, worker count
_SLOT = struct.Struct("<qqQ")           # serving pid (0: missing), last pid that served, restarts


class WorkerStateError(ValueError):
    """The descriptor given to a worker is not a worker table (a startup mistake, not a runtime one)."""


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    index: int
    serving_pid: int        # 0 while the worker is missing: not started, starting, stopping or dead
    served_pid: int         # the last pid that reached serving here (kept after it stops)
    restarts: int


class WorkerTable:
    def __init__(self, fd: int, count: int, memory: mmap.mmap) -> None:
        self.fd = fd
        self.count = count
        self._memory = memory

    @classmethod
    def create(cls, count: int) -> WorkerTable:
        """The supervisor's table for `count` workers, every slot missing."""
        fd = os.memfd_create("idgate-workers")
        size = _HEADER.size + count * _SLOT.size
        os.ftruncate(fd, size)
        memory = mmap.mmap(fd, size)
        _HEADER.pack_into(memory, 0, _MAGIC, count)
        return cls(fd, count, memory)

    @classmethod
    def attach(cls, fd: int) -> WorkerTable:
        """A worker's view of the table its supervisor passed as `fd`."""
        try:
            size = os.fstat(fd).st_size
            memory = mmap.mmap(fd, size) if size >= _HEADER.size else None
        except OSError as exc:
            raise WorkerStateError(f"worker state descriptor {fd}: {exc.strerror}") from exc
        if memory is None:
            raise WorkerStateError(f"worker state descriptor {fd} is not a worker table")
        magic, count = _HEADER.unpack_from(memory, 0)
        if magic != _MAGIC or size != _HEADER.size + count * _SLOT.size:
            memory.close()
            raise WorkerStateError(f"worker state descriptor {fd} is not a worker table")
        return cls(fd, count, memory)

    def _offset(self, index: int) -> int:
        if not 0 <= index < self.count:
            raise WorkerStateError(f"worker index {index} is outside 0..{self.count - 1}")
        return _HEADER.size + index * _SLOT.size

    def slot(self, index: int) -> WorkerSlot:
        serving, served, restarts = _SLOT.unpack_from(self._memory, self._offset(index))
        return WorkerSlot(index, serving, served, restarts)

    def slots(self) -> list[WorkerSlot]:
        return [self.slot(i) for i in range(self.count)]

    def _write(self, slot: WorkerSlot) -> None:
        _SLOT.pack_into(self._memory, self._offset(slot.index), slot.serving_pid, slot.served_pid, slot.restarts)

    def mark_serving(self, index: int, pid: int) -> None:
        """The worker at `index` (pid `pid`) answers on every listener."""
        current = self.slot(index)
        self._write(WorkerSlot(index, pid, pid, current.restarts))

    def unmark(self, index: int, pid: int) -> None:
        """`pid` no longer serves at `index` (a no-op when another pid holds the slot)."""
        current = self.slot(index)
        if current.serving_pid == pid:
            self._write(WorkerSlot(index, 0, current.served_pid, current.restarts))

    def count_restart(self, index: int) -> int:
        current = self.slot(index)
        self._write(WorkerSlot(index, current.serving_pid, current.served_pid, current.restarts + 1))
        return current.restarts + 1

    def close(self) -> None:
        self._memory.close()
        os.close(self.fd)


@dataclass(frozen=True, slots=True)
class WorkerSeat:
    """One worker's place in its supervisor's table."""
    table: WorkerTable
    index: int

    def mark_serving(self) -> None:
        self.table.mark_serving(self.index, os.getpid())

    def unmark(self) -> None:
        self.table.unmark(self.index, os.getpid())

    def readiness(self) -> dict[str, object]:
        """What /readyz says about the workers: every worker must be serving."""
        missing = [slot.index for slot in self.table.slots() if slot.serving_pid == 0]
        return {"expected": self.table.count, "running": self.table.count - len(missing), "missing": missing}


class RestartsCollector(Collector):
    """`idgate_worker_restarts_total{worker}`, read from the shared table at scrape time: the supervisor
    counts, and every worker's /metrics shows every worker's count."""

    def __init__(self, table: WorkerTable, registry: CollectorRegistry) -> None:
        self._table = table
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("idgate_worker_restarts", "Times the `--workers` supervisor restarted a "
                                     "worker that had died, by worker index.", labels=("worker",))
        for slot in self._table.slots():
            family.add_metric((str(slot.index),), slot.restarts)
        yield family
