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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from proxy.audit.anchors import Anchor
from proxy.audit.chain import ChainState
from proxy.audit.state import StateError, read_state
from proxy.audit.tail import Position
from proxy.core import strict_json

MAX_ANCHORS_FILE_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class ShipState:
    cloudwatch_position: Position | None = None
    cloudwatch_floor_ms: int = 0           # the last event timestamp sent: the next ones are not earlier
    anchor_floor_ms: int = 0               # the same for the anchors stream
    s3_state: ChainState | None = None     # the last record of the last uploaded segment
    s3_segment: str = ""
    anchors: tuple[Anchor, ...] = ()       # as anchors.jsonl holds them
    stored: tuple[tuple[str, int], ...] = ()   # (sink, the newest anchor number it holds)

    @property
    def last_anchor(self) -> Anchor | None:
        return self.anchors[-1] if self.anchors else None

    def seq(self, sink: str) -> int:
        if sink == "cloudwatch":
            return self.cloudwatch_position.seq if self.cloudwatch_position else 0
        return self.s3_state.seq if self.s3_state else 0

    def stored_anchor(self, sink: str) -> Anchor | None:
        number = dict(self.stored).get(sink)
        return next((a for a in self.anchors if a.number == number), None)

    def with_cloudwatch(self, position: Position, floor_ms: int) -> ShipState:
        return dataclasses.replace(self, cloudwatch_position=position, cloudwatch_floor_ms=floor_ms)

    def with_s3(self, state: ChainState, segment: str) -> ShipState:
        return dataclasses.replace(self, s3_state=state, s3_segment=segment)

    def with_anchor(self, anchor: Anchor) -> ShipState:
        return dataclasses.replace(self, anchors=(*self.anchors, anchor))

    def with_anchor_floor(self, floor_ms: int) -> ShipState:
        return dataclasses.replace(self, anchor_floor_ms=floor_ms)

    def with_stored_anchor(self, sink: str, anchor: Anchor) -> ShipState:
        return dataclasses.replace(self, stored=(*((s, n) for s, n in self.stored if s != sink), (sink, anchor.number)))

    def cloudwatch_json(self) -> dict[str, Any]:
        return {"position": self.cloudwatch_position.to_json() if self.cloudwatch_position else None,
                "floor_ms": self.cloudwatch_floor_ms, "anchor_floor_ms": self.anchor_floor_ms,
                "anchor": dict(self.stored).get("cloudwatch", 0)}

    def s3_json(self) -> dict[str, Any]:
        return {"seq": self.s3_state.seq if self.s3_state else 0, "hash": self.s3_state.prev if self.s3_state else "",
                "segment": self.s3_segment, "anchor": dict(self.stored).get("s3", 0)}


def load_ship_state(directory: Path) -> ShipState:
    state = ShipState(anchors=_read_anchors(directory / "anchors.jsonl"))
    stored: list[tuple[str, int]] = []
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
        stored.append(("cloudwatch", _count(cloudwatch, "anchor")))
    s3 = read_state(directory / "s3.json")
    if s3 is not None:
        seq, digest, segment = _count(s3, "seq"), s3.get("hash"), s3.get("segment")
        if not isinstance(digest, str) or not isinstance(segment, str) or (seq and len(digest) != 64):
            raise StateError(f"{directory / 's3.json'}: not an S3 shipping state (seq, hash, segment)")
        state = dataclasses.replace(state, s3_state=ChainState(seq, digest) if seq else None, s3_segment=segment)
        stored.append(("s3", _count(s3, "anchor")))
    return dataclasses.replace(state, stored=tuple(stored))


def _count(state: dict[str, Any], key: str) -> int:
    value = state.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise StateError(f"{key} is not a count")
    return value


def _read_anchors(path: Path) -> tuple[Anchor, ...]:
    """Our own anchors file: the payloads are read without checking signatures (the key may have been
    rotated since; a verifier checks them against the sinks' copies)."""
    try:
        data = path.read_bytes()[:MAX_ANCHORS_FILE_BYTES]
    except FileNotFoundError:
        return ()
    lines = data.split(b"\n")
    lines.pop()                               # after the last newline: empty, or a torn append
    anchors: list[Anchor] = []
    for number, line in enumerate(lines, 1):
        token = line.decode("ascii", "replace")
        try:
            fields = strict_json.loads(jwt.api_jws.decode_complete(token, options={"verify_signature": False})["payload"])
            anchor = Anchor(fields["instance"], int(fields["n"]), int(fields["seq"]), str(fields["hash"]),
                            str(fields["time"]), str(fields["prev"]), token)
        except (jwt.InvalidTokenError, ValueError, KeyError, TypeError) as exc:
            raise StateError(f"{path}:{number}: not an anchor ({exc})") from exc
        anchors.append(anchor)
    return tuple(anchors)
