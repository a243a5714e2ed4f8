"""The shipper's small state files (checkpoints, the last anchor): JSON written to a temp file, fsynced
and renamed over the old one, then the directory fsynced, so a crash leaves the old state or the new,
never a torn one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from proxy.core import strict_json

MAX_STATE_BYTES = 1 << 16


class StateError(ValueError):
    """A state file exists but is not one idgate wrote: the message names it and says why."""


def write_state(path: Path, state: dict[str, Any]) -> None:
    data = json.dumps(state, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    _write_durably(temp, os.O_TRUNC, data)
    os.replace(temp, path)
    sync_directory(path.parent)


def read_state(path: Path) -> dict[str, Any] | None:
    """The state, or None when the file does not exist."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_STATE_BYTES:
        raise StateError(f"{path}: larger than {MAX_STATE_BYTES} bytes")
    try:
        return strict_json.loads_object(data)
    except ValueError as exc:
        raise StateError(f"{path}: not a JSON state file ({exc})") from exc


def sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_line(path: Path, line: bytes) -> None:
    """Append one line and make it durable (the gap ledger and the local anchors: rare, small writes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_durably(path, os.O_APPEND, line)


def _write_durably(path: Path, mode: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | mode, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
