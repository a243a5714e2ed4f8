"""Reading the local audit chain in order from a shipper's position: across rotated segments, up to
the last durable record, checking every record's hash and its link to the one before as it reads.

A Position is where a sink stands: the segment file and byte offset right after the last record it
has, with that record's seq and hash.  Rotation renames the live file aside without changing its
bytes, so a position recorded against the live file stays valid in its rotated name: the tail finds
the file by seq (rotated names carry their last seq), and trusts the offset only when the bytes just
before it end with the position's hash, else it looks for that record in the file.  A position
whose record is nowhere in the chain is a ChainBreak, never a silent restart.

Blocking file I/O: runs on the shipper's thread.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, NamedTuple

from proxy.audit.chain import GENESIS, MAX_LINE_BYTES, READ_CHUNK, LineError, follows, line_ts, parse_line
from proxy.audit.sink import segment_files

_ROTATED_SEQ = re.compile(r"\.\d{8}T\d{6}Z\.(\d+)\.[^.]*\Z")
_PRINTABLE = bytes(range(0x20, 0x7F))          # all a canonical line holds (translate deletes them: ~10x a regex)


class ChainBreak(Exception):
    """The local chain is not intact where the shipper reads it: `where` is file:line or the position."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where, self.problem = where, problem


@dataclass(frozen=True, slots=True)
class Position:
    segment: str                    # file name in the audit directory when the record was read
    offset: int                     # byte offset right after the record's line
    seq: int
    hash: str

    def to_json(self) -> dict[str, object]:
        return {"segment": self.segment, "offset": self.offset, "seq": self.seq, "hash": self.hash}

    @classmethod
    def from_json(cls, state: dict[str, object]) -> Position:
        segment, offset, seq, digest = (state.get(k) for k in ("segment", "offset", "seq", "hash"))
        if not (isinstance(segment, str) and "/" not in segment and isinstance(offset, int) and 0 < offset < 1 << 48
                and isinstance(seq, int) and 0 < seq < 1 << 53 and isinstance(digest, str) and len(digest) == 64):
            raise ValueError("not a shipping position (segment, offset, seq, hash)")
        return cls(segment, offset, seq, digest)


class TailRecord(NamedTuple):
    """One record as read (a tuple: one is built per record shipped)."""

    line: bytes                     # the exact line, without its newline
    segment: str                    # the file it was read from
    offset: int                     # the byte offset right after it
    seq: int
    hash: str
    timestamp_ms: int               # its ts, in milliseconds since the epoch

    @property
    def position(self) -> Position:
        return Position(self.segment, self.offset, self.seq, self.hash)


def rotated_last_seq(path: Path) -> int | None:
    """The last seq a rotated segment's name carries; None for the live segment."""
    match = _ROTATED_SEQ.search(path.name)
    return int(match[1]) if match else None


def first_seq(path: Path) -> int | None:
    """The seq of a segment's first record (None when it cannot be read as one)."""
    try:
        with path.open("rb") as f:
            line = f.readline(MAX_LINE_BYTES + 1).rstrip(b"\n")
        record, intact = parse_line(line)
    except (OSError, LineError):
        return None
    return int(record["seq"]) if intact else None


@functools.lru_cache(maxsize=64)
def timestamp_ms(ts: str) -> int:
    """A record's ts ("2026-11-22T23:59:59.123456Z") in ms; every record of a batch shares one."""
    moment = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


class ChainTail:
    def __init__(self, audit_path: Path) -> None:
        self._path = audit_path

    def read(self, after: Position | None, through_seq: int, *, max_records: int, max_bytes: int) -> list[TailRecord]:
        """The records after `after` (from the oldest local record when None) up to seq `through_seq`,
        at most max_records of them and about max_bytes; [] when there is nothing new."""
        if after is not None and after.seq >= through_seq:
            return []
        out: list[TailRecord] = []
        size = 0
        with closing(self._records(after)) as records:
            for record in records:
                out.append(record)
                size += len(record.line)
                if record.seq >= through_seq or len(out) >= max_records or size >= max_bytes:
                    break
        return out

    def _records(self, after: Position | None) -> Generator[TailRecord, None, None]:
        try:
            files = segment_files(self._path)
            index, offset = self._locate(files, after)
        except ChainBreak:
            # The live segment may have rotated between the listing and the look: list once more.
            files = segment_files(self._path)
            index, offset = self._locate(files, after)
        expected = (after.seq, after.hash) if after is not None else None
        while index < len(files):
            path = files[index]
            try:
                with path.open("rb") as f:
                    f.seek(offset)
                    for record in _verified(f, path, offset, expected):
                        expected = (record.seq, record.hash)
                        yield record
            except FileNotFoundError:
                return           # rotated or deleted under us: the next round lists the files again
            if rotated_last_seq(path) is None:
                return           # the live segment: what follows is not written yet
            index, offset = index + 1, 0

    def _locate(self, files: list[Path], after: Position | None) -> tuple[int, int]:
        """The file index and offset where the record after `after` starts."""
        if after is None:
            return 0, 0
        for index, path in enumerate(files):
            last = rotated_last_seq(path)
            if last is not None and last < after.seq:
                continue
            if last == after.seq:
                return index + 1, 0
            offset = _offset_after(path, after)
            if offset is None:
                break
            return index, offset
        raise ChainBreak(f"{after.segment}@{after.offset}", f"the shipped record seq {after.seq} "
                         "is not in the local chain (segments replaced, truncated or restarted)")


def _offset_after(path: Path, after: Position) -> int | None:
    """Where the line after `after`'s record starts in `path`: its recorded offset when the bytes before
    it end with its hash, else found by scanning; None when the file does not hold that record.  The
    record found must be the position's seq too (a checkpoint's seq is not taken on trust)."""
    suffix = b',"hash":"' + after.hash.encode("ascii") + b'"}\n'
    try:
        with path.open("rb") as f:
            offset = _hinted(f, after.offset, suffix)
            if offset is None:
                offset = _scanned(f, suffix)
            if offset is None:
                return None
            if _seq_ending_at(f, offset) != after.seq:
                raise ChainBreak(f"{after.segment}@{after.offset}", f"the shipped record is not seq {after.seq} "
                                 "(a checkpoint that does not match the chain)")
            return offset
    except FileNotFoundError:
        return None


def _hinted(f: BinaryIO, offset: int, suffix: bytes) -> int | None:
    if offset < len(suffix):
        return None
    try:
        f.seek(offset - len(suffix))
    except (OverflowError, ValueError, OSError):
        return None
    return offset if f.read(len(suffix)) == suffix else None


def _scanned(f: BinaryIO, suffix: bytes) -> int | None:
    f.seek(0)
    carry, consumed = b"", 0
    while chunk := f.read(READ_CHUNK):
        data = carry + chunk
        found = data.find(suffix)
        if found >= 0:
            return consumed - len(carry) + found + len(suffix)
        carry = data[-len(suffix):]
        consumed += len(chunk)
    return None


def _seq_ending_at(f: BinaryIO, offset: int) -> int | None:
    """The seq of the record whose line ends (with its newline) at `offset`."""
    start = max(0, offset - MAX_LINE_BYTES - 1)
    f.seek(start)
    data = f.read(offset - start)[:-1]
    line = data[data.rfind(b"\n") + 1:]
    try:
        record, intact = parse_line(line)
    except LineError:
        return None
    return int(record["seq"]) if intact else None


def _verified(f: BinaryIO, path: Path, offset: int, expected: tuple[int, str] | None) -> Iterator[TailRecord]:
    """Records from the file's current offset, each checked and linked; stops before a line that is
    not terminated yet (a batch being written).  Once a record is placed, each next line is checked by
    chain.follows (its hash over its bytes, onto the one before) and its ts read from the line's fixed
    tail: a quarter of a full parse, on every record idgate writes.  Any doubt gets the full parse,
    for the precise reason."""
    carry = b""
    segment = path.name
    while chunk := f.read(READ_CHUNK):
        lines = (carry + chunk).split(b"\n")
        carry = lines.pop()
        for line in lines:
            start, offset = offset, offset + len(line) + 1
            if line.translate(None, _PRINTABLE):
                # Not a line the canonical encoding writes; and the sinks get exactly the bytes read.
                raise ChainBreak(f"{path}@{start}", "holds a control or non-ASCII byte: not an idgate record")
            digest = follows(line, expected[1]) if expected is not None else None
            ts = line_ts(line) if digest is not None else None
            if digest is None or ts is None:
                seq, digest, ts = _parsed(line, f"{path}@{start}", expected)
            else:
                assert expected is not None
                seq = expected[0] + 1
            try:
                stamp = timestamp_ms(ts)
            except ValueError as exc:
                raise ChainBreak(f"{path}@{start}", f"record seq {seq} has a malformed ts") from exc
            expected = (seq, digest)
            yield TailRecord(line, segment, offset, seq, digest, stamp)


def _parsed(line: bytes, where: str, expected: tuple[int, str] | None) -> tuple[int, str, str]:
    """The record's seq, hash and ts by a full parse, or the ChainBreak that says what is wrong."""
    try:
        record, intact = parse_line(line)
    except LineError as exc:
        raise ChainBreak(where, str(exc)) from exc
    seq, prev = record["seq"], record["prev"]
    if not intact:
        raise ChainBreak(where, f"hash mismatch: record seq {seq} was edited")
    if expected is not None and (seq, prev) != (expected[0] + 1, expected[1]):
        raise ChainBreak(where, f"record seq {seq} does not follow seq {expected[0]} "
                                "(records deleted, inserted or reordered)")
    if expected is None and seq == 1 and prev != GENESIS:
        raise ChainBreak(where, "the first record does not start at the genesis")
    ts = record.get("ts")
    if not isinstance(ts, str):
        raise ChainBreak(where, f"record seq {seq} has no ts")
    return seq, record["hash"], ts
