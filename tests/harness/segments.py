"""Audit segments written for tests and benchmarks: records sealed onto one chain, a batch at a time."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxy.audit.chain import ChainState, SealedBatch, unsealed


def write_segment(path: Path, target_bytes: int, record: Callable[[int], dict[str, Any]],
                  per_batch: int = 500) -> int:
    """At least `target_bytes` of `record(n)` for n = 0, 1, ... on one chain; how many records it wrote."""
    state, written, count = ChainState(), 0, 0
    with path.open("wb") as f:
        while written < target_bytes:
            batch = SealedBatch(state, time.time())
            for i in range(per_batch):
                batch.add(unsealed(record(count + i)))
            data = batch.data()
            f.write(data)
            written, count, state = written + len(data), count + per_batch, batch.state
    return count


def sealed_lines(records: list[dict[str, Any]], *, state: ChainState = ChainState(),
                 epoch: float = 1795860000.0) -> list[bytes]:
    """`records` sealed onto the chain after `state`, one line each (no newline), all at `epoch`."""
    batch = SealedBatch(state, epoch)
    for record in records:
        batch.add(unsealed({k: v for k, v in record.items() if k != "ts"}))
    return batch.data().splitlines()
