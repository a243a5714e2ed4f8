"""The records of some chains that answer a query, streamed in each chain's order: every line checked
(one that is malformed or fails its own hash is reported with its `where`, counted and not shown), a
record shipped twice dropped, a different line under an (instance, seq) already read reported as a
conflict, and each outcome judged together with its decision (query.py).

A decision shown only because of its outcome (a Scan found by the items it returned) is shown just
before that outcome, so such a pair reads together but out of seq order.  Memory is bounded whatever
the sources hold: the seqs read are kept as ranges, line digests for the last WINDOW records and for
every record shown, and allowed decisions awaiting their outcome (reverse proxy and gateway calls in
flight) up to HELD_BYTES of their lines: an outcome whose decision has left that window is judged alone.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

from proxy.audit.chain import LineError, parse_line
from proxy.audit.query import Filters, partition_keys_of
from proxy.audit.sources import Chain, SourceLine
from proxy.core import strict_json

WINDOW = 100_000
HELD_BYTES = 64 * 1024 * 1024
# All idgate writes: compact JSON, ASCII with every other character escaped.  Anything else (a raw
# control byte, a carriage return between members) is no record of idgate's, and could act on a terminal.
_PRINTABLE = re.compile(rb"[\x20-\x7e]*\Z")
_HMAC = "hmac-sha256:"
_OUTCOMES = frozenset({"proxy", "dynamodb"})     # the surfaces whose allowed requests have an outcome record


@dataclass(frozen=True, slots=True)
class Found:
    where: str
    instance: str                          # the record's own, else its chain's name
    record: dict[str, Any]
    line: bytes                            # exactly as stored, without the newline
    decision: dict[str, Any] | None = None  # an outcome's decision, when it was still held


@dataclass(slots=True)
class Tally:
    chains: int = 0
    records: int = 0                       # intact records read, duplicates included
    shown: int = 0
    malformed: int = 0
    edited: int = 0
    duplicates: int = 0
    conflicts: int = 0
    uncompared: int = 0                    # a seq read before, beyond the window: not shown again
    redacted: int = 0                      # records whose keys are HMACs --key could not be compared with


class Search:
    def __init__(self, filters: Filters, report: Callable[[str], None], *, window: int = WINDOW,
                 held_bytes: int = HELD_BYTES, remember_shown: bool = True) -> None:
        """`remember_shown` False: a record shown is compared again only within the window, so memory stays
        flat however many are shown (idgate suggest, which aggregates); a copy of it met further on (the
        same record in another sink) is then counted as not compared rather than recognized."""
        self._filters = filters
        self._report = report
        self._seen = _Seen(window, remember_shown)
        self._held: LRUCache[tuple[str, str], _Held] = LRUCache(held_bytes, getsizeof=lambda held: len(held.line) + 256)
        self._hmac_blind = bool(filters.keys) and not any(k.startswith(_HMAC) for k in filters.keys)
        self.tally = Tally()

    def run(self, chains: Iterable[Chain]) -> Iterator[Found]:
        for chain in chains:
            self.tally.chains += 1
            for line in chain.lines():
                read = self._read(chain, line)
                if read is not None:
                    yield from self._judge(read)

    def _read(self, chain: Chain, line: SourceLine) -> _Read | None:
        """A record that is new, or None once what is wrong with the line has been said and counted."""
        where, data, tally = line.where, line.data, self.tally
        if line.problem:
            self._report(f"{where}: {line.problem}")
        if data is None:
            tally.malformed += 1
            return None
        if not _PRINTABLE.match(data):
            self._report(f"{where}: bytes outside printable ASCII (not a line idgate writes)")
            tally.malformed += 1
            return None
        try:
            record, intact = parse_line(data)
        except LineError as exc:
            self._report(f"{where}: {exc}")
            tally.malformed += 1
            return None
        if not intact:
            self._report(f"{where}: hash mismatch: record seq {record['seq']} was edited (not shown)")
            tally.edited += 1
            return None
        tally.records += 1
        instance = record.get("instance")
        if chain.location.startswith(("s3://", "cloudwatch://")):
            # A sink names its chain (an S3 folder, a stream) after the instance: a record is that chain's,
            # whatever it says; one that claims another instance was put there by someone else.
            if isinstance(instance, str) and instance != chain.name:
                self._report(f"{where}: the record names instance {str(instance)[:100]!r}, not {chain.name!r} "
                             "whose records these are (not shown)")
                tally.conflicts += 1
                return None
        read = _Read(where, instance if isinstance(instance, str) else chain.name, record, data,
                     hashlib.blake2b(data, digest_size=16).digest())
        verdict = self._seen.verdict(read.instance, record["seq"], read.digest)
        if verdict is _NEW:
            return read
        if verdict is _SAME:
            tally.duplicates += 1
        elif verdict is _OTHER:
            # Two different records under one (instance, seq): one of them was put there by someone who can
            # write to the sink.  Both are shown; the chain (verify --anchors) tells which is the record.
            tally.conflicts += 1
            self._report(f"{where}: conflict: another record with instance {read.instance} seq {record['seq']} "
                         "was read before: both are shown, and one of them is not the chain's (run idgate audit "
                         "verify --anchors on this source)")
            return read
        else:
            tally.uncompared += 1
        return None

    def _judge(self, read: _Read) -> Iterator[Found]:
        record, filters = read.record, self._filters
        event, request_id = record.get("event"), record.get("request_id")
        if event == "outcome" and isinstance(request_id, str):
            held = self._held.pop((read.instance, request_id), None)      # one outcome per decision
            decision = strict_json.loads(held.line) if held is not None else None
            if decision is not None and decision.get("surface") != record.get("surface"):
                held = decision = None
            if not filters.matches(record, decision):
                self._note_redacted(record)
                return
            if held is not None and decision is not None and not held.shown and filters.shows("decision"):
                yield self._show(_Read(held.where, read.instance, decision, held.line, held.digest))
            if filters.shows("outcome"):
                yield self._show(read, decision)
            return
        shown = filters.matches(record) and filters.shows(event)
        if not shown:
            self._note_redacted(record)
        if event == "decision" and record.get("decision") == "allow" and record.get("surface") in _OUTCOMES \
                and isinstance(request_id, str):
            self._held[(read.instance, request_id)] = _Held(read.where, read.digest, read.line, shown)
        if shown:
            yield self._show(read)

    def _show(self, read: _Read, decision: dict[str, Any] | None = None) -> Found:
        self._seen.shown(read.instance, read.record["seq"], read.digest)
        self.tally.shown += 1
        return Found(read.where, read.instance, read.record, read.line, decision)

    def _note_redacted(self, record: dict[str, Any]) -> None:
        if self._hmac_blind and any(isinstance(k, str) and k.startswith(_HMAC) for k in partition_keys_of(record)):
            self.tally.redacted += 1


@dataclass(frozen=True, slots=True)
class _Read:
    where: str
    instance: str
    record: dict[str, Any]
    line: bytes
    digest: bytes


@dataclass(frozen=True, slots=True)
class _Held:
    """An allowed decision whose outcome may follow."""

    where: str
    digest: bytes
    line: bytes
    shown: bool


_NEW, _SAME, _OTHER, _UNKNOWN = object(), object(), object(), object()


class _Seen:
    """Which (instance, seq) were read: exactly, as ranges (a chain's seqs are consecutive, so they stay
    few), with line digests for the last `window` records and for every one shown: a record met again is
    a duplicate (same bytes) or a conflict (another line), or beyond the window, not compared."""

    def __init__(self, window: int, remember_shown: bool = True) -> None:
        self._window = window
        self._remember_shown = remember_shown
        self._ranges: dict[str, _Ranges] = {}
        self._recent: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._shown: dict[tuple[str, int], bytes] = {}

    def verdict(self, instance: str, seq: int, digest: bytes) -> object:
        key = (instance, seq)
        earlier = self._shown.get(key) or self._recent.get(key)
        if earlier is not None:
            return _SAME if earlier == digest else _OTHER
        if not self._ranges.setdefault(instance, _Ranges()).add(seq):
            return _UNKNOWN
        self._recent[key] = digest
        if len(self._recent) > self._window:
            self._recent.popitem(last=False)
        return _NEW

    def shown(self, instance: str, seq: int, digest: bytes) -> None:
        if self._remember_shown:
            self._shown[(instance, seq)] = digest


class _Ranges:
    """A set of integers as sorted, disjoint, non-adjacent [start, end] ranges."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, n: int) -> bool:
        """Add `n`; False when it was in already."""
        starts, ends = self._starts, self._ends
        i = bisect.bisect_right(starts, n) - 1          # the last range starting at or before n
        if i >= 0 and n <= ends[i]:
            return False
        joins_left = i >= 0 and ends[i] == n - 1
        joins_right = i + 1 < len(starts) and starts[i + 1] == n + 1
        if joins_left and joins_right:
            ends[i] = ends.pop(i + 1)
            del starts[i + 1]
        elif joins_left:
            ends[i] = n
        elif joins_right:
            starts[i + 1] = n
        else:
            starts.insert(i + 1, n)
            ends.insert(i + 1, n)
        return True
