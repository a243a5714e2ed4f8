"""The audit record format and its hash chain: sealing a record into one line, checking a line,
and verifying a sequence of segment files.  Pure functions; the only I/O is reading files to verify.

Format (one line per record, `\\n`-terminated, pure ASCII):

    C    = json.dumps(record_without_hash, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False)
    hash = hex(sha256(prev + C))          prev and C as ASCII bytes; prev is the 64-hex `prev` field
    line = C without its final "}" + ',"hash":"' + hash + '"}' + "\\n"

`record_without_hash` holds the caller's fields plus instance (the writer's id, audit.instance), v (1),
seq (1 for the very first record, then +1 per record, continuing across rotated files), ts (UTC,
"2026-11-22T23:59:59.123456Z") and prev (the previous record's `hash`, or 64 zeros before the first
record).  Because the hash member is always the last 75 bytes before the newline, a third party
can verify without re-serializing: take the line, cut `,"hash":"<64 hex>"}`, append "}", and hash `prev` + those bytes.
A caller's field names sort before "ts" (the audit log refuses others), so every line ends with
`"ts":"<ts>","v":1,"hash":"<64 hex>"}`: a reader finds a record's time without parsing it (`line_ts`).

Retention (retention.py) deletes the oldest segments only after a `retention` record naming their
last record (through_seq, through_hash) is in the chain; a file set whose first record is not the
genesis verifies only when such a record accounts for where it starts.

The chain detects an edited, deleted, inserted or reordered record and a missing segment.  It is
unkeyed, so someone who can rewrite the whole tail can recompute it, and dropping the newest
records leaves no trace in the files themselves: anchor the latest `hash` elsewhere for that.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from _json import encode_basestring_ascii, make_encoder
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from proxy.core import strict_json

VERSION = 1
GENESIS = "0" * 64
RESERVED = frozenset({"v", "seq", "ts", "prev", "hash", "instance"})

_HASH_SUFFIX = re.compile(rb',"hash":"([0-9a-f]{64})"\}\Z')
_HASH_MEMBER_BYTES = len(b',"hash":"') + 64 + len(b'"}')
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_SCAN_BLOCK = 1 << 16
# Verification reads a file this much at a time and holds at most one line of MAX_LINE_BYTES besides,
# so its memory does not grow with the file.  idgate's records are a few KB at most; a longer line
# is reported, not buffered.
READ_CHUNK = 1 << 20
MAX_LINE_BYTES = 1 << 20

Progress = Callable[["Path | str", int], None]
"""Told the segment being read and the records verified so far: as it starts, every PROGRESS_RECORDS
records, and as it ends."""
PROGRESS_RECORDS = 1 << 16
COPY_WINDOW = 1 << 15              # a resent batch repeats at most one shipping round (10,000 records)


@dataclass(frozen=True, slots=True)
class ChainState:
    """Where the chain stands: the last record written (seq 0 and GENESIS before the first)."""

    seq: int = 0
    prev: str = GENESIS


@dataclass(frozen=True, slots=True)
class VerifyReport:
    ok: bool
    records: int
    files: int
    problems: tuple[str, ...]
    starts_after: int = 0          # the last seq retention deleted before the first file (0: from the genesis)
    copies: int = 0                # records a sink held twice, byte for byte, skipped (verify_segments' drop_copies)


# What json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False) runs, built
# once: json.dumps with arguments builds a JSONEncoder and this C encoder on every call (a third of
# its cost).  No circular-reference markers: a cyclic record fails with RecursionError instead of
# ValueError, and a reused markers dict would keep stale entries after a failed record.
_encode_chunks = make_encoder(None, json.JSONEncoder().default, encode_basestring_ascii, None,
                              ":", ",", True, False, False)


def _canonical_text(record: dict[str, Any]) -> str:
    return "".join(_encode_chunks(record, 0))


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes a record's hash covers (see the module docstring)."""
    return _canonical_text(record).encode("ascii")


@functools.lru_cache(maxsize=4)
def _second_prefix(second: int) -> str:
    return datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def format_ts(epoch: float) -> str:
    """RFC 3339 with microseconds, UTC; the date part is formatted once per second (hot path)."""
    second = int(epoch)
    micro = round((epoch - second) * 1_000_000)   # rounds like datetime.fromtimestamp
    if micro == 1_000_000:
        second, micro = second + 1, 0
    return f"{_second_prefix(second)}.{micro:06d}Z"


def unsealed(fields: dict[str, Any], instance: str | None = None) -> dict[str, Any]:
    """A copy of the caller's fields with the chain's members in it, for SealedBatch.add to fill in
    (done when a record is queued, so the caller may reuse its dict).  `instance` names the writer:
    with `seq` it identifies a record wherever it is shipped, so a consumer can drop a duplicate."""
    record = {**fields, "v": VERSION, "seq": 0, "ts": "", "prev": ""}
    if instance is not None:
        record["instance"] = instance
    return record


class SealedBatch:
    """Records sealed onto the chain one after another, all with one timestamp: their lines, and the
    chain state after the last of them."""

    __slots__ = ("_parts", "_prev", "_seq", "_ts")

    def __init__(self, state: ChainState, epoch: float) -> None:
        self._seq, self._prev = state.seq, state.prev
        self._ts = format_ts(epoch)
        self._parts: list[str] = []

    def add(self, record: dict[str, Any]) -> None:
        """Seal one record from `unsealed` (its chain members are overwritten).  Raises TypeError,
        ValueError or RecursionError when it is not JSON-serializable; the batch is then unchanged."""
        prev, seq = self._prev, self._seq + 1
        record["seq"], record["ts"], record["prev"] = seq, self._ts, prev
        text = _canonical_text(record)
        digest = hashlib.sha256((prev + text).encode("ascii")).hexdigest()
        self._parts += (text[:-1], ',"hash":"', digest, '"}\n')
        self._seq, self._prev = seq, digest

    def data(self) -> bytes:
        return "".join(self._parts).encode("ascii")

    @property
    def state(self) -> ChainState:
        return ChainState(self._seq, self._prev)


class LineError(ValueError):
    """A line that is not a well-formed record; the message says what is wrong."""


def parse_line(line: bytes) -> tuple[dict[str, Any], bool]:
    """Parse one line (without its newline) into a record and whether its own hash is right.
    Raises LineError when it is not a well-formed record at all."""
    try:
        # Strict: two readers could disagree on a duplicate key's value, and a forged line show one and hash another.
        record = strict_json.loads(line)
    except json.JSONDecodeError as exc:
        raise LineError(f"bad JSON ({exc})") from exc
    except ValueError as exc:      # well-formed JSON idgate never writes: a duplicate key, NaN, not UTF-8
        raise LineError(str(exc)) from exc
    if not isinstance(record, dict):
        raise LineError("not a JSON object")
    if record.get("v") != VERSION:
        raise LineError(f"unsupported record version {record.get('v')!r}")
    seq, prev, digest = record.get("seq"), record.get("prev"), record.get("hash")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise LineError("missing or invalid seq")
    if not isinstance(prev, str) or not _HEX64.match(prev):
        raise LineError("missing or invalid prev")
    match = _HASH_SUFFIX.search(line)
    if not isinstance(digest, str) or match is None or match.group(1).decode("ascii") != digest:
        raise LineError('the line does not end with the "hash" member')
    covered = line[: match.start()] + b"}"
    intact = hashlib.sha256(prev.encode("ascii") + covered).hexdigest() == digest
    return record, intact


_TS_MEMBER = re.compile(rb'"ts":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)","v":1\Z')
_TS_MEMBER_BYTES = len(b'"ts":"2026-11-22T23:59:59.123456Z","v":1')


def caller_fields_problem(fields: dict[str, Any]) -> str | None:
    """Why a caller's record cannot go on the chain as it is: a member the log sets, or a name that
    would sort after "ts" (the fixed tail of every line)."""
    if not RESERVED.isdisjoint(fields):
        return f"audit record fields {sorted(RESERVED.intersection(fields))} are set by the audit log"
    late = sorted(name for name in fields if name >= "ts")
    if late:
        return f"audit record fields {late} sort after 'ts': every line ends with ts, v and hash"
    return None


def line_ts(line: bytes) -> str | None:
    """The ts of a record line, read from its fixed tail (None when the line does not end as idgate's do)."""
    cut = len(line) - _HASH_MEMBER_BYTES
    match = _TS_MEMBER.match(line, cut - _TS_MEMBER_BYTES, cut) if cut > _TS_MEMBER_BYTES else None
    return match[1].decode("ascii") if match else None


def follows(line: bytes, prev: str) -> str | None:
    """The line's hash if it is a record hashed onto `prev` (the hash before it), else None.  Cheaper
    than parse_line (no JSON parse), for reading a whole segment whose first record parse_line
    placed: a line passes only if its own hash covers its bytes with `prev` as the prefix, and its
    `prev` member names that hash.  `audit verify` still parses every line in full."""
    cut = len(line) - _HASH_MEMBER_BYTES
    if cut < 1 or line[cut:cut + 9] != b',"hash":"' or line[-2:] != b'"}':
        return None
    claimed = line[cut + 9:-2].decode("ascii", "replace")
    digest = hashlib.sha256(prev.encode("ascii"))
    digest.update(memoryview(line)[:cut])
    digest.update(b"}")
    if digest.hexdigest() != claimed or line.find(b'"prev":"' + prev.encode("ascii") + b'"', 0, cut) < 0:
        return None
    return claimed


def _quiet(name: Path | str, records: int) -> None:
    pass


LineProblems = tuple[str, bytes | None, tuple[str, ...]]
"""A line to verify: where it is (file:line, s3://bucket/key:line...), its bytes (None: it cannot be a
record at all) and what is wrong with it before parsing (too long, unterminated)."""

SegmentLines = tuple["Path | str", Iterable[LineProblems]]
"""A segment to verify: its name (a path or a URL), and its lines in order."""


def verify_files(paths: Sequence[Path], progress: Progress | None = None,
                 observe: Callable[[int, str], None] | None = None) -> VerifyReport:
    """Check the chain across segment files given oldest first (as `segment_files` lists them), reading
    each in chunks: memory stays flat whatever the files' size.  `observe` is told the seq and hash of
    every intact record (for comparing with anchors)."""
    if not paths:
        return VerifyReport(False, 0, 0, ("no audit files to verify",))
    return verify_segments([(path, file_lines(path)) for path in paths], progress, observe)


def file_lines(path: Path) -> Iterator[LineProblems]:
    """A segment file's lines as verify_segments takes them."""
    with path.open("rb") as f:
        for number, line, terminated in read_lines(f):
            problems: tuple[str, ...] = () if terminated else ("unterminated last line (file truncated mid-record)",)
            if line is None:
                problems += (f"line longer than {MAX_LINE_BYTES} bytes (not an idgate record)",)
            yield f"{path}:{number}", line, problems


def verify_segments(segments: Iterable[SegmentLines], progress: Progress | None = None,
                    observe: Callable[[int, str], None] | None = None, *, drop_copies: bool = False) -> VerifyReport:
    """Check one chain across its segments, oldest first.  With `drop_copies` (a sink that may hold a
    record twice after a crash), a record that repeats one of the last COPY_WINDOW records byte for
    byte (same seq, same hash) is counted and skipped; any other repeat is a problem."""
    problems: list[str] = []
    expected = ChainState()
    records = copies = files = 0
    previous: Path | str | None = None
    start: tuple[int, str, dict[str, Any]] | None = None    # a first record after the genesis (problem index, where)
    deleted_through: list[ChainState] = []                  # what intact retention records say they deleted
    recent: dict[int, str] = {}                             # seq -> hash of the last COPY_WINDOW records
    tell = progress or _quiet
    for name, lines in segments:
        files += 1
        first_in_file = True
        tell(name, records)
        try:
            for where, line, line_problems in lines:
                problems.extend(f"{where}: {problem}" for problem in line_problems)
                if line is None:
                    continue
                try:
                    record, intact = parse_line(line)
                except LineError as exc:
                    problems.append(f"{where}: {exc}")
                    continue
                if drop_copies and intact and record["seq"] <= expected.seq and recent.get(record["seq"]) == record["hash"]:
                    copies += 1
                    continue
                records += 1
                if records % PROGRESS_RECORDS == 0:
                    tell(name, records)
                if not intact:
                    problems.append(f"{where}: hash mismatch: record seq {record['seq']} was edited")
                else:
                    if observe is not None:
                        observe(record["seq"], record["hash"])
                    if (announced := _retention_through(record)) is not None:
                        deleted_through.append(announced)
                if expected.seq == 0 and (record["seq"], record["prev"]) != (1, GENESIS):
                    start = (len(problems), where, record)    # judged once every retention record is known
                else:
                    problems.extend(_link_problems(where, record, expected, first_in_file, previous))
                expected = ChainState(record["seq"], record["hash"])
                if drop_copies:
                    recent[record["seq"]] = record["hash"]
                    recent.pop(record["seq"] - COPY_WINDOW, None)
                first_in_file = False
        except OSError as exc:
            problems.append(f"{name}: cannot read ({exc.strerror or exc})")
            continue
        tell(name, records)
        previous = name
    starts_after = 0
    if start is not None:
        index, where, record = start
        if any(_accounts_for(record, through) for through in deleted_through):
            starts_after = record["seq"] - 1
        else:
            problems.insert(index, f"{where}: the chain does not start here (seq {record['seq']}, prev not the "
                                   "genesis): earlier records or segments are missing")
    return VerifyReport(not problems, records, files, tuple(problems), starts_after, copies)


def _retention_through(record: dict[str, Any]) -> ChainState | None:
    if record.get("event") != "retention":
        return None
    seq, digest = record.get("through_seq"), record.get("through_hash")
    if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 1 and isinstance(digest, str) \
            and _HEX64.match(digest):
        return ChainState(seq, digest)
    return None


def _accounts_for(first: dict[str, Any], through: ChainState) -> bool:
    """Whether a retention record that deleted everything up to `through` explains a chain starting at
    `first`: right after it (and linked to its hash), or inside the deleted range when a deletion was
    interrupted (those records were going anyway; their own links are still checked)."""
    seq: int = first["seq"]
    prev: str = first["prev"]
    if seq == through.seq + 1:
        return prev == through.prev
    return 2 <= seq <= through.seq


def _link_problems(where: str, record: dict[str, Any], expected: ChainState,
                   first_in_file: bool, previous_file: Path | str | None) -> Iterable[str]:
    seq, prev = record["seq"], record["prev"]
    if seq == expected.seq + 1 and prev == expected.prev:
        return
    if first_in_file and previous_file is not None:
        yield (f"{where}: does not follow the last record of {previous_file} (seq {expected.seq}): "
               "a segment is missing, truncated or out of order")
    if seq > expected.seq + 1:
        yield f"{where}: seq gap: expected {expected.seq + 1}, found {seq} (records deleted)"
    elif seq <= expected.seq:
        yield f"{where}: seq goes backwards: expected {expected.seq + 1}, found {seq} (records reordered or duplicated)"
    if prev != expected.prev:
        yield (f"{where}: prev does not match the hash of the record before it "
               "(a record was deleted, inserted or reordered)")


def read_lines(f: BinaryIO, *, chunk_bytes: int = READ_CHUNK,
               max_line: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes | None, bool]]:
    """(1-based line number, line without newline or None when longer than max_line, whether it ended
    with a newline), reading chunk_bytes at a time and carrying a line's start into the next chunk.
    Splits on b"\\n" only, never on other Unicode line breaks."""
    number = 0
    carry = b""
    too_long = False          # inside a line already longer than max_line: skipped up to its newline
    while chunk := f.read(chunk_bytes):
        lines = chunk.split(b"\n")
        if too_long:
            if len(lines) == 1:
                continue
            number += 1
            yield number, None, True
            too_long = False
            del lines[0]
        else:
            lines[0] = carry + lines[0]
        carry = lines.pop()
        for line in lines:
            number += 1
            yield number, (line if len(line) <= max_line else None), True
        if len(carry) > max_line:
            carry, too_long = b"", True
    if too_long:
        yield number + 1, None, False
    elif carry:
        yield number + 1, carry, False


def last_record(path: Path) -> tuple[ChainState | None, int]:
    """The newest intact record in a file, scanning backwards block by block, and the length of
    the file's terminated part (bytes after the last newline are a torn write).  None when no line
    in the file is an intact record."""
    with path.open("rb") as f:
        pos = f.seek(0, 2)
        carry = b""          # start of a line whose beginning lies in an earlier block
        terminated: int | None = None
        while pos > 0:
            start = max(0, pos - _SCAN_BLOCK)
            f.seek(start)
            data = f.read(pos - start) + carry
            pos = start
            if terminated is None:
                cut = data.rfind(b"\n")
                if cut < 0:
                    carry = data
                    continue
                terminated = start + cut + 1
                data = data[:cut]
            parts = data.split(b"\n")
            carry = parts[0] if start > 0 else b""
            for line in reversed(parts[1:] if start > 0 else parts):
                try:
                    record, intact = parse_line(line)
                except LineError:
                    continue
                if intact:
                    return ChainState(record["seq"], record["hash"]), terminated
        return None, terminated or 0
