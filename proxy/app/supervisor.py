"""`idgate serve --workers N`: N worker processes on the same ports (SO_REUSEPORT).  A worker that dies is
reaped and started again at its index (same audit segment, same instance id) after a backoff; SIGHUP is
relayed; SIGTERM or SIGINT stops every worker, and the supervisor exits 0 when they stopped cleanly."""

from __future__ import annotations

import dataclasses
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from proxy.config import Config
from proxy.core.errors import ConfigError, ConfigProblem
from proxy.worker_state import WorkerTable

log = logging.getLogger("idgate")

EXIT_OK, EXIT_FAILED = 0, 1
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_HANDLED = (signal.SIGCHLD, signal.SIGHUP, *_STOP_SIGNALS)


def worker_config(config: Config, index: int) -> Config:
    """Each worker writes its own audit segment under its own instance id: one hash chain per writer,
    no cross-process locking, and its own shipped stream.  A restarted worker takes the same ones."""
    audit = config.audit
    audit_path = audit.path.with_name(f"{audit.path.stem}.w{index}{audit.path.suffix}")
    return dataclasses.replace(config, audit=dataclasses.replace(audit, path=audit_path,
                                                                 instance=f"{audit.instance}.w{index}"))


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before restarting a worker that died: doubling from `first` up to `cap` for deaths in a row;
    a worker that stayed up `stable` seconds starts the series again."""
    first: float = 0.5
    cap: float = 30.0
    stable: float = 60.0

    def delay(self, deaths_in_a_row: int) -> float:
        return min(self.cap, self.first * 2.0 ** max(0, deaths_in_a_row - 1))

    def deaths_in_a_row(self, before: int, uptime: float) -> int:
        return 1 if uptime >= self.stable else before + 1


def exit_status(returncode: int) -> str:
    """Popen's returncode in words: a signal by its name."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with {returncode}"


@dataclass(slots=True)
class _Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    deaths_in_a_row: int = 0
    restart_at: float | None = None     # set while the worker waits out its backoff


class Supervisor:
    """`command(index, fd)` is a worker's argv, `fd` the shared table's descriptor it inherits."""

    def __init__(self, command: Callable[[int, int], Sequence[str]], table: WorkerTable, *,
                 backoff: Backoff = Backoff(), clock: Callable[[], float] = time.monotonic) -> None:
        self._command = command
        self._table = table
        self._backoff = backoff
        self._clock = clock
        self._workers = [_Worker(i) for i in range(table.count)]
        self._stopping = False
        self._failed = False
        self._final: list[int] = []     # returncodes of the workers stopped by the shutdown

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT (or a worker that cannot start) and every worker is reaped."""
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        # The signal handlers do nothing: Python writes each signal's number to the wakeup pipe, and the
        # loop below acts on it between select() calls, where nothing else is half done.
        previous_fd = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, _noted) for sig in _HANDLED}
        try:
            for worker in self._workers:
                self._start(worker)
            while not (self._stopping and all(w.process is None for w in self._workers)):
                readable, _, _ = select.select([wake_read], [], [], self._timeout())
                received = os.read(wake_read, 4096) if readable else b""
                for signum in received:
                    self._on_signal(signum)
                self._reap()
                self._restart_due()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_fd)
            os.close(wake_read)
            os.close(wake_write)
        # A worker stopped before it had installed its handlers dies by the signal itself: still a clean stop.
        clean = {0, *(-sig for sig in _STOP_SIGNALS)}
        return EXIT_FAILED if self._failed or not set(self._final) <= clean else EXIT_OK

    def _timeout(self) -> float | None:
        """Until the next restart is due; None (wait for a signal) when none is."""
        due = [w.restart_at for w in self._workers if w.restart_at is not None]
        return max(0.0, min(due) - self._clock()) if due else None

    def _start(self, worker: _Worker) -> None:
        worker.restart_at = None
        worker.process = subprocess.Popen(self._command(worker.index, self._table.fd), pass_fds=(self._table.fd,))
        worker.started_at = self._clock()
        log.info("worker started", extra={"worker": worker.index, "pid": worker.process.pid,
                                          "restarts": self._table.slot(worker.index).restarts})

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP and not self._stopping:
            # Only to the workers serving: one still starting has no handler yet (SIGHUP would kill it),
            # and it reads the policy files and the issuers' keys as it starts anyway.
            self._send(signal.SIGHUP, serving_only=True)
        elif signum in _STOP_SIGNALS:
            self._stop(signal.Signals(signum))

    def _send(self, sig: signal.Signals, *, serving_only: bool = False) -> None:
        for worker in self._workers:
            process = worker.process
            if process is None or process.returncode is not None:
                continue
            if not serving_only or self._table.slot(worker.index).serving_pid == process.pid:
                process.send_signal(sig)

    def _stop(self, sig: signal.Signals) -> None:
        if not self._stopping:
            log.info("idgate supervisor stopping", extra={"signal": sig.name})
        self._stopping = True
        for worker in self._workers:
            worker.restart_at = None        # a worker in its backoff stays down
        self._send(sig)

    def _reap(self) -> None:
        for worker in self._workers:
            process = worker.process
            if process is None or process.poll() is None:
                continue
            worker.process = None
            served = self._table.slot(worker.index).served_pid == process.pid
            self._table.unmark(worker.index, process.pid)
            if self._stopping:
                self._final.append(process.returncode)
                log.info("worker stopped", extra={"worker": worker.index, "pid": process.pid,
                                                  "status": exit_status(process.returncode),
                                                  "returncode": process.returncode})
            elif not served and process.returncode > 0 and self._table.slot(worker.index).restarts == 0:
                # It refused to start (its config, a port, its audit file): restarting would only repeat that.
                log.error("worker could not start, stopping the others", extra={
                    "worker": worker.index, "pid": process.pid, "status": exit_status(process.returncode),
                    "returncode": process.returncode})
                self._failed = True
                self._stop(signal.SIGTERM)
            else:
                self._schedule_restart(worker, process)

    def _schedule_restart(self, worker: _Worker, process: subprocess.Popen[bytes]) -> None:
        now = self._clock()
        worker.deaths_in_a_row = self._backoff.deaths_in_a_row(worker.deaths_in_a_row, now - worker.started_at)
        delay = self._backoff.delay(worker.deaths_in_a_row)
        worker.restart_at = now + delay
        log.error("worker died, restarting it", extra={
            "worker": worker.index, "pid": process.pid, "status": exit_status(process.returncode),
            "returncode": process.returncode, "restart_in_seconds": delay})

    def _restart_due(self) -> None:
        now = self._clock()
        for worker in self._workers:
            if worker.restart_at is not None and worker.restart_at <= now and not self._stopping:
                self._table.count_restart(worker.index)
                self._start(worker)


def _noted(_signum: int, _frame: object) -> None:
    """The wakeup pipe carries the signal (see Supervisor.run)."""


def run_workers(config: Config, config_path: Path, count: int, worker_args: Sequence[str]) -> int:
    """`idgate serve --workers N`: `worker_args` are the serve options every worker gets."""
    if config.listen.port == 0 or config.admin.port == 0:
        raise ConfigError([ConfigProblem(str(config_path), None, "--workers needs fixed listen and admin ports")])
    table = WorkerTable.create(count)
    try:
        base = [sys.executable, "-m", "proxy", "serve", "--config", str(config_path), *worker_args]
        return Supervisor(lambda index, fd: [*base, "--worker-index", str(index), "--worker-state-fd", str(fd)],
                          table).run()
    finally:
        table.close()
