"""The table a `--workers` supervisor shares with its workers: slots, readiness, the restarts metric."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from proxy.worker_state import RestartsCollector, WorkerSeat, WorkerStateError, WorkerTable


@pytest.fixture
def table():
    table = WorkerTable.create(2)
    yield table
    table.close()


def test_readiness_counts_only_workers_that_marked_themselves_serving(table: WorkerTable) -> None:
    seat = WorkerSeat(WorkerTable.attach(table.fd), 1)       # the worker's own mapping of the same memory
    assert seat.readiness() == {"expected": 2, "running": 0, "missing": [0, 1]}
    table.mark_serving(0, 4242)
    seat.mark_serving()
    assert seat.readiness() == {"expected": 2, "running": 2, "missing": []}
    table.unmark(0, 4242)                   # the supervisor reaped it
    assert seat.readiness() == {"expected": 2, "running": 1, "missing": [0]}
    assert table.slot(0).served_pid == 4242


def test_unmark_leaves_a_slot_another_pid_holds(table: WorkerTable) -> None:
    table.mark_serving(0, 100)
    table.unmark(0, 99)
    assert table.slot(0).serving_pid == 100


def test_restarts_are_exposed_by_worker_index(table: WorkerTable) -> None:
    registry = CollectorRegistry()
    RestartsCollector(WorkerTable.attach(table.fd), registry)
    table.count_restart(1)
    table.count_restart(1)
    text = generate_latest(registry).decode()
    assert 'idgate_worker_restarts_total{worker="0"} 0.0' in text
    assert 'idgate_worker_restarts_total{worker="1"} 2.0' in text


def test_a_descriptor_that_is_not_a_table_is_refused(tmp_path) -> None:
    with (tmp_path / "other").open("wb+") as other:
        other.write(b"x" * 64)
        other.flush()
        with pytest.raises(WorkerStateError, match="is not a worker table"):
            WorkerTable.attach(other.fileno())


def test_an_index_outside_the_table_is_refused(table: WorkerTable) -> None:
    with pytest.raises(WorkerStateError, match="outside 0..1"):
        table.slot(2)
