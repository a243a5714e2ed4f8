"""The audit segment file on disk: open it under an exclusive lock, append a batch with one write,
make it durable with one fsync (cut back to the last durable length on failure), reopen after
trouble, rotate.

With fsync on, the AuditLog runs a batch's write and fsync as one call (`append`) in its one file
thread, together with rotate and close; with fsync off it writes on the event loop (an append to the
page cache costs microseconds, a thread handoff more).  It never overlaps two calls, so nothing here
is concurrent.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from proxy.audit.chain import ChainState, last_record

_log = logging.getLogger(__name__)


class SegmentFileError(OSError):
    """The audit path cannot be used at all (locked by another process, not a regular file)."""


@dataclass(frozen=True, slots=True)
class _Good:
    """The file the chain lives in and its length after the last durable batch."""

    dev: int
    ino: int
    size: int


def rotated_path(path: Path, epoch: float, last_seq: int) -> Path:
    """`<stem>.<UTC timestamp>.<last seq in it>.jsonl`: sortable, and the seq orders it even if the clock steps back."""
    stamp = datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    return path.with_name(f"{path.stem}.{stamp}.{last_seq:012d}{path.suffix}")


def segment_files(path: Path) -> list[Path]:
    """The rotated siblings of `path`, oldest first, then `path` itself if it exists."""
    pattern = re.compile(re.escape(path.stem) + r"\.\d{8}T\d{6}Z\.(\d+)" + re.escape(path.suffix) + r"\Z")
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        names = []
    rotated = sorted((int(m[1]), name) for name in names if (m := pattern.match(name)))
    files = [path.parent / name for _, name in rotated]
    if path.exists():
        files.append(path)
    return files


class SegmentSink:
    def __init__(self, path: Path, *, rotate_bytes: int, fsync_enabled: bool,
                 write: Callable[[int, bytes], int], fsync: Callable[[int], None],
                 clock: Callable[[], float]) -> None:
        self._path = path
        self._rotate_bytes = rotate_bytes
        self._fsync_enabled = fsync_enabled
        self._write = write
        self._fsync = fsync
        self._clock = clock
        self._fd: int | None = None
        self._good: _Good | None = None
        self._unsynced: _Good | None = None     # where the file stood before writes not yet fsynced

    def open(self) -> ChainState:
        """Open and lock the active file, drop a torn last line, and say where the chain stands:
        after the newest intact record of the active file, else of the newest rotated file."""
        self._open_active()
        assert self._fd is not None and self._good is not None
        state, terminated = last_record(self._path)
        if terminated < self._good.size:
            self._cut_to(terminated)
        if state is None:
            for older in reversed(segment_files(self._path)[:-1]):
                state, _ = last_record(older)
                if state is not None:
                    break
        return state or ChainState()

    def write_batch(self, data: bytes) -> None:
        """Append `data` (not yet durable: see sync); on any failure cut the file back so it holds no
        part of it."""
        self._ensure_active()
        assert self._fd is not None and self._good is not None
        fd, good = self._fd, self._good
        try:
            written = 0
            while written < len(data):
                n = self._write(fd, data[written:] if written else data)
                if n <= 0:
                    raise OSError(errno.EIO, "audit write made no progress")
                written += n
        except BaseException:
            self._roll_back(good)
            raise
        self._unsynced = self._unsynced or good
        self._good = _Good(good.dev, good.ino, good.size + len(data))

    def append(self, data: bytes) -> None:
        """write_batch, then sync: `data` is durable when this returns, or none of it is in the file."""
        self.write_batch(data)
        self.sync()

    @property
    def fsync_enabled(self) -> bool:
        return self._fsync_enabled

    def sync(self) -> None:
        """fsync what write_batch appended; on failure cut the file back to its last durable length,
        so a record is either durable or gone."""
        before, self._unsynced = self._unsynced, None
        if not self._fsync_enabled or before is None:
            return
        assert self._fd is not None
        try:
            self._fsync(self._fd)
        except BaseException:
            self._roll_back(before)
            raise

    @property
    def path(self) -> Path:
        return self._path

    def holds_records(self) -> bool:
        return self._good is not None and self._good.size > 0

    def needs_rotation(self) -> bool:
        return self._good is not None and self._good.size > self._rotate_bytes

    def rotate(self, last_seq: int) -> None:
        """Rename the active file aside and start a new one; creating it syncs the directory,
        which makes the rename durable too."""
        os.rename(self._path, rotated_path(self._path, self._clock(), last_seq))
        self._close_fd()
        self._good = None
        self._open_active()

    def close(self) -> None:
        self._close_fd()

    def _open_active(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(self._path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:
            fd = os.open(self._path, flags)
            created = False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                # /dev/null (or a FIFO) would swallow the audit while every append reports success.
                raise SegmentFileError(errno.EINVAL, "the audit path is not a regular file", str(self._path))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise SegmentFileError(errno.EWOULDBLOCK, "the audit file is locked by another process",
                                       str(self._path)) from exc
        except BaseException:
            os.close(fd)
            raise
        if created:
            self.sync_directory()
        self._fd = fd
        self._good = _Good(st.st_dev, st.st_ino, st.st_size)

    def _ensure_active(self) -> None:
        """Make sure the descriptor is the file at the configured path, reopening when it was
        closed after a failure, or the file was removed or replaced underneath us (writes to an
        unlinked file would vanish on close)."""
        if self._fd is not None:
            try:
                st = os.stat(self._path)
            except FileNotFoundError:
                st = None
            if st is not None and self._good is not None and (st.st_dev, st.st_ino) == (self._good.dev, self._good.ino):
                return
            _log.warning("audit file %s was removed or replaced; continuing the chain in a new file", self._path)
            self._close_fd()
            self._good = None
        lost = self._good
        self._open_active()
        assert self._good is not None
        if lost is not None and (lost.dev, lost.ino) == (self._good.dev, self._good.ino) \
                and self._good.size >= lost.size:
            # Same file we had to let go of: cut whatever a failed batch left behind.
            if self._good.size > lost.size:
                self._cut_to(lost.size)
        else:
            _, terminated = last_record(self._path)
            if terminated < self._good.size:
                self._cut_to(terminated)

    def _roll_back(self, good: _Good) -> None:
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, good.size)
            if self._fsync_enabled:
                self._fsync(self._fd)
            # The file ends where the last durable record does: the next write (and the next cut
            # back) start there, never at the length the refused batch gave it.
            self._good, self._unsynced = good, None
        except OSError as exc:
            # Keep `good` so the reopen before the next batch cuts the same file back first.
            _log.error("audit file %s could not be cut back to %d bytes (%s); reopening before the next write",
                       self._path, good.size, exc)
            self._close_fd()
            self._good = good

    def _cut_to(self, size: int) -> None:
        assert self._fd is not None and self._good is not None
        _log.warning("audit file %s: dropping %d byte(s) after the last complete record",
                     self._path, self._good.size - size)
        os.ftruncate(self._fd, size)
        if self._fsync_enabled:
            self._fsync(self._fd)
        self._good = _Good(self._good.dev, self._good.ino, size)

    def sync_directory(self) -> None:
        """A rename, create or delete is durable only once the directory entry is."""
        if not self._fsync_enabled:
            return
        dfd = os.open(self._path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._fsync(dfd)
        finally:
            os.close(dfd)

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
