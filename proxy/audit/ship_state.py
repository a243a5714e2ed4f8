"""What the shipper keeps on disk in its state directory, and reads back at start:

    cloudwatch.json  {"position": {segment, offset, seq, hash}, "floor_ms", "anchor_floor_ms", "anchor": n}
    s3.json          {"seq", "hash", "segment", "anchor": n}
    anchors.jsonl    every anchor signed, one compact JWS per line (numbering and the prev link go on from
                     its last line; an unterminated last line is a crash mid-append and is ignored)
    gaps.jsonl       the gap ledger: records a sink refused for good (written by the shipper)

A state file that exists but is not valid stops shipping at start with its name in the error: guessing
a position could lose records or flood a sink with copies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jwt

from proxy.audit.anchors import Anchor
from proxy.audit.chain import ChainState
from proxy.audit.state import StateError, read_state
from proxy.audit.tail import Position
from proxy.core import strict_json

MAX_PENDING_ANCHORS = 10_000    # anchors a sink does not hold yet, read back at start (the newest)
MAX_GAPS_FILE_BYTES = 16 << 20


class StoredAnchor(NamedTuple):
    """The newest anchor a sink holds: its number, and the seq it vouches for (what retention needs)."""

    number: int
    seq: int


@dataclass(frozen=True, slots=True)
class ShipState:
    cloudwatch_position: Position | None = None
    cloudwatch_floor_ms: int = 0           # the last event timestamp sent: the next ones are not earlier
    anchor_floor_ms: int = 0               # the same for the anchors stream
    s3_state: ChainState | None = None     # the last record of the last uploaded segment
    s3_segment: str = ""
    last_anchor: Anchor | None = None      # the newest anchor signed: numbering and the prev link go on from it
    pending: tuple[Anchor, ...] = ()       # at start: signed anchors some sink may not hold yet
    stored: tuple[tuple[str, StoredAnchor], ...] = ()   # (sink, the newest anchor it holds)
    refused: tuple[tuple[int, int], ...] = ()           # seq ranges the gap ledger holds

    def seq(self, sink: str) -> int:
        if sink == "cloudwatch":
            return self.cloudwatch_position.seq if self.cloudwatch_position else 0
        return self.s3_state.seq if self.s3_state else 0

    def stored_anchor(self, sink: str) -> StoredAnchor | None:
        return dict(self.stored).get(sink)

    def with_cloudwatch(self, position: Position, floor_ms: int) -> ShipState:
        return dataclasses.replace(self, cloudwatch_position=position, cloudwatch_floor_ms=floor_ms)

    def with_s3(self, state: ChainState, segment: str) -> ShipState:
        return dataclasses.replace(self, s3_state=state, s3_segment=segment)

    def with_anchor(self, anchor: Anchor) -> ShipState:
        return dataclasses.replace(self, last_anchor=anchor)

    def with_anchor_floor(self, floor_ms: int) -> ShipState:
        return dataclasses.replace(self, anchor_floor_ms=floor_ms)

    def with_stored_anchor(self, sink: str, anchor: Anchor) -> ShipState:
        mark = StoredAnchor(anchor.number, anchor.seq)
        return dataclasses.replace(self, stored=(*((s, a) for s, a in self.stored if s != sink), (sink, mark)))

    def _anchor_json(self, sink: str) -> dict[str, int]:
        mark = self.stored_anchor(sink)
        return {"anchor": mark.number if mark else 0, "anchor_seq": mark.seq if mark else 0}

    def cloudwatch_json(self) -> dict[str, Any]:
        return {"position": self.cloudwatch_position.to_json() if self.cloudwatch_position else None,
                "floor_ms": self.cloudwatch_floor_ms, "anchor_floor_ms": self.anchor_floor_ms,
                **self._anchor_json("cloudwatch")}

    def s3_json(self) -> dict[str, Any]:
        return {"seq": self.s3_state.seq if self.s3_state else 0, "hash": self.s3_state.prev if self.s3_state else "",
                "segment": self.s3_segment, **self._anchor_json("s3")}


def load_ship_state(directory: Path) -> ShipState:
    state = ShipState()
    stored: list[tuple[str, StoredAnchor]] = []
    cloudwatch = read_state(directory / "cloudwatch.json")
    if cloudwatch is not None:
        try:
            raw = cloudwatch.get("position")
            position = Position.from_json(raw) if isinstance(raw, dict) else None
            floor, anchor_floor = _count(cloudwatch, "floor_ms"), _count(cloudwatch, "anchor_floor_ms")
        except ValueError as exc:
            raise StateError(f"{directory / 'cloudwatch.json'}: {exc}") from exc
        state = dataclasses.replace(state, cloudwatch_position=position, cloudwatch_floor_ms=floor,
                                    anchor_floor_ms=anchor_floor)
        stored.append(("cloudwatch", _stored(cloudwatch)))
    s3 = read_state(directory / "s3.json")
    if s3 is not None:
        seq, digest, segment = _count(s3, "seq"), s3.get("hash"), s3.get("segment")
        if not isinstance(digest, str) or not isinstance(segment, str) or (seq and len(digest) != 64):
            raise StateError(f"{directory / 's3.json'}: not an S3 shipping state (seq, hash, segment)")
        state = dataclasses.replace(state, s3_state=ChainState(seq, digest) if seq else None, s3_segment=segment)
        stored.append(("s3", _stored(s3)))
    # A sink without a state file holds no anchor yet: every anchor is pending for it (the newest
    # MAX_PENDING_ANCHORS of them).
    held = min((mark.number for _, mark in stored), default=0) if len(stored) == 2 else 0
    newest_first = _newest_anchors(directory / "anchors.jsonl", held)
    return dataclasses.replace(state, stored=tuple(stored), last_anchor=newest_first[0] if newest_first else None,
                               pending=tuple(reversed(newest_first)), refused=_refused(directory / "gaps.jsonl"))


def _count(state: dict[str, Any], key: str) -> int:
    value = state.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise StateError(f"{key} is not a count")
    return value


def _stored(state: dict[str, Any]) -> StoredAnchor:
    return StoredAnchor(_count(state, "anchor"), _count(state, "anchor_seq"))


def _newest_anchors(path: Path, held: int) -> list[Anchor]:
    """Our own anchors file read backwards from its end: the anchors after number `held` (at most
    MAX_PENDING_ANCHORS), newest first, and always the newest one.  The payloads are read without
    checking signatures (the key may have been rotated since; a verifier checks the sinks' copies);
    an unterminated last line is a crash mid-append and is skipped."""
    found: list[Anchor] = []
    for number, line in _lines_backwards(path):
        token = line.decode("ascii", "replace")
        try:
            fields = strict_json.loads(jwt.api_jws.decode_complete(token, options={"verify_signature": False})["payload"])
            anchor = Anchor(fields["instance"], int(fields["n"]), int(fields["seq"]), str(fields["hash"]),
                            str(fields["time"]), str(fields["prev"]), token)
        except (jwt.InvalidTokenError, ValueError, KeyError, TypeError) as exc:
            raise StateError(f"{path}: line {number} from the end: not an anchor ({exc})") from exc
        if found and anchor.number <= held:
            break
        found.append(anchor)
        if anchor.number <= held or len(found) >= MAX_PENDING_ANCHORS:
            break
    return found


def _lines_backwards(path: Path) -> Iterator[tuple[int, bytes]]:
    """The terminated lines of a file from its end (1 = the last), reading 64 KiB blocks backwards;
    what follows the last newline (a torn append) is not a line."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return
    with f:
        pos = f.seek(0, 2)
        buffer = b""
        torn_dropped = False
        number = 0
        while pos > 0:
            start = max(0, pos - (1 << 16))
            f.seek(start)
            buffer = f.read(pos - start) + buffer
            pos = start
            if not torn_dropped:
                cut = buffer.rfind(b"\n")
                if cut < 0:
                    continue
                buffer, torn_dropped = buffer[:cut], True
            parts = buffer.split(b"\n")
            buffer = parts[0]                # may go on in an earlier block
            for line in reversed(parts[1:]):
                if line.strip():
                    number += 1
                    yield number, line
        if torn_dropped and buffer.strip():
            yield number + 1, buffer


def _refused(path: Path) -> tuple[tuple[int, int], ...]:
    try:
        data = path.read_bytes()[-MAX_GAPS_FILE_BYTES:]
    except FileNotFoundError:
        return ()
    ranges = []
    for line in data.splitlines():
        try:
            entry = strict_json.loads_object(line)
            ranges.append((int(entry["first_seq"]), int(entry["last_seq"])))
        except (ValueError, KeyError, TypeError):
            continue                        # a torn last line, or the cut start of an overlong ledger
    return tuple(ranges)
