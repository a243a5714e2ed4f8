"""Retention of rotated audit segments: which of them to delete (the oldest, beyond audit.max_segments
or audit.max_bytes), the chain record that announces the deletion, and the deletion itself.

Deleting is write-ahead: the AuditLog first makes a `retention` record durable in the chain, naming
the last record of the segments it is about to delete (through_seq, through_hash), and only then
deletes them, oldest first.  `verify_files` accepts a chain that starts after the genesis only when
such a record accounts for the missing start, so a deletion by retention verifies and any other
(an intruder removing old segments) does not.  The live segment is never deleted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.audit.chain import ChainState, last_record
from proxy.audit.sink import segment_files

_log = logging.getLogger(__name__)

EVENT = "retention"


def _any_segment(_path: Path) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Retention:
    max_segments: int | None = None               # rotated segments kept
    max_bytes: int | None = None                  # their total size
    # Hook for audit shipping (a later issue): never delete a segment that has not been shipped.  Until
    # shipping exists every rotated segment may go; shipping passes a predicate that says whether a
    # segment is safely elsewhere.  Deletion stops at the first segment it refuses, so what remains is
    # always one contiguous chain.
    may_delete: Callable[[Path], bool] = field(default=_any_segment)


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    segments: tuple[Path, ...]                    # oldest first
    through: ChainState                           # the last record in them

    def record(self) -> dict[str, Any]:
        """The chain record announcing the deletion; segment names only (the first and last), so its
        size does not depend on how many there are."""
        return {"event": EVENT, "segments": len(self.segments), "first_segment": self.segments[0].name,
                "last_segment": self.segments[-1].name, "through_seq": self.through.seq,
                "through_hash": self.through.prev}


def segments_to_delete(rotated: Sequence[tuple[Path, int]], retention: Retention) -> list[Path]:
    """Of the rotated segments (path, size), oldest first, those to delete, oldest first: counting from
    the newest, every segment from the first one that no longer fits the limits.  Pure."""
    kept_count = kept_bytes = 0
    cut = 0
    for index in range(len(rotated) - 1, -1, -1):
        size = rotated[index][1]
        if (retention.max_segments is not None and kept_count + 1 > retention.max_segments) or \
                (retention.max_bytes is not None and kept_bytes + size > retention.max_bytes):
            cut = index + 1
            break
        kept_count, kept_bytes = kept_count + 1, kept_bytes + size
    doomed: list[Path] = []
    for path, _ in rotated[:cut]:
        if not retention.may_delete(path):
            break
        doomed.append(path)
    return doomed


def plan_retention(path: Path, retention: Retention) -> RetentionPlan | None:
    """What to delete among the rotated siblings of the live segment `path` (runs in the writer
    thread: it lists the directory and reads the tail of one file)."""
    rotated = [(p, p.stat().st_size) for p in segment_files(path) if p != path]
    doomed = segments_to_delete(rotated, retention)
    if not doomed:
        return None
    through, _ = last_record(doomed[-1])
    if through is None:
        # Without its last record the deletion could not be accounted for in the chain: keep the file as evidence.
        _log.warning("audit retention: %s holds no intact record; keeping it and everything after it", doomed[-1])
        return None
    return RetentionPlan(tuple(doomed), through)


def delete_segments(plan: RetentionPlan, sync_directory: Callable[[], None]) -> int:
    """Delete the planned segments oldest first (so an interruption leaves a contiguous chain); how many went."""
    deleted = 0
    for segment in plan.segments:
        try:
            os.unlink(segment)
        except FileNotFoundError:
            continue
        except OSError as exc:
            _log.warning("audit retention: cannot delete %s (%s); retrying after the next rotation", segment, exc)
            break
        deleted += 1
    if deleted:
        try:
            sync_directory()
        except OSError as exc:      # the files are gone either way; a crash could at worst bring one back
            _log.warning("audit retention: directory sync after deleting failed: %s", exc)
    return deleted
