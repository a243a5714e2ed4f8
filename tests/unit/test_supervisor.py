"""The `--workers` supervisor's backoff schedule and exit statuses, and its loop against real child
processes: a worker that dies is restarted at its index and counted; one that cannot start stops it all."""

from __future__ import annotations

import os
import signal
import sys
import threading

import pytest

from proxy.app.supervisor import Backoff, Supervisor, exit_status
from proxy.worker_state import WorkerTable


def test_the_backoff_doubles_from_half_a_second_up_to_its_cap() -> None:
    backoff = Backoff()
    assert [backoff.delay(n) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_worker_that_stayed_up_starts_the_series_again() -> None:
    backoff = Backoff(stable=60.0)
    assert backoff.deaths_in_a_row(5, uptime=3.0) == 6
    assert backoff.deaths_in_a_row(5, uptime=60.0) == 1
    assert backoff.deaths_in_a_row(0, uptime=0.1) == 1


def test_exit_status_names_the_signal() -> None:
    assert exit_status(-signal.SIGKILL) == "killed by SIGKILL"
    assert exit_status(3) == "exited with 3"
    assert exit_status(0) == "exited with 0"


# A worker that kills itself on its first run; its restart asks the supervisor to stop, then waits for it.
WORKER = """
import os, signal, sys
from proxy.worker_state import WorkerTable
if WorkerTable.attach(int(sys.argv[1])).slot(int(sys.argv[2])).restarts == 0:
    os.kill(os.getpid(), signal.SIGKILL)
os.kill(os.getppid(), signal.SIGTERM)
signal.pause()   # until the supervisor stops it
"""


@pytest.fixture
def table():
    # Should the supervisor wait for something that never comes, SIGTERM stops it and the test fails.
    watchdog = threading.Timer(15.0, os.kill, (os.getpid(), signal.SIGTERM))
    watchdog.start()
    table = WorkerTable.create(1)
    yield table
    watchdog.cancel()
    table.close()


def test_a_dead_worker_is_restarted_at_its_index_and_counted(table: WorkerTable) -> None:
    supervisor = Supervisor(lambda index, fd: [sys.executable, "-c", WORKER, str(fd), str(index)], table,
                            backoff=Backoff(first=0.05))
    assert supervisor.run() == 0
    assert table.slot(0).restarts == 1 and table.slot(0).serving_pid == 0


def test_a_worker_that_cannot_start_is_not_restarted(table: WorkerTable) -> None:
    supervisor = Supervisor(lambda index, fd: [sys.executable, "-c", "raise SystemExit(2)"], table,
                            backoff=Backoff(first=0.05))
    assert supervisor.run() == 1
    assert table.slot(0).restarts == 0
