"""The CloudWatch Logs sink: audit records as log events, one stream per instance, and the anchors in
the stream `<instance>.anchors` beside it.  The message of an event is the record's exact line.

PutLogEvents' limits (AWS documentation): a batch holds at most 10,000 events and 1,048,576 bytes
counting each message's UTF-8 bytes plus 26, its events are in time order and span at most 24 hours,
and an event is at most 256 KiB.  Timestamps are the records' own, made non-decreasing across
batches and restarts (a clock stepping back must not break the order); events AWS rejects as too old,
too new or expired come back as Rejected ranges for the gap ledger.

Blocking: runs on the shipper's thread.
"""

from __future__ import annotations

from _json import encode_basestring_ascii
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.audit.aws_json import AwsJsonApi, ShipError
from proxy.audit.tail import TailRecord

MAX_BATCH_EVENTS = 10_000
MAX_BATCH_BYTES = 1_048_576
EVENT_OVERHEAD = 26
MAX_EVENT_BYTES = 256 * 1024 - EVENT_OVERHEAD
MAX_SPAN_MS = 24 * 3600 * 1000 - 1
MAX_AHEAD_MS = 110 * 60 * 1000       # CloudWatch refuses events more than 2 hours ahead
ANCHOR_SUFFIX = ".anchors"


@dataclass(frozen=True, slots=True)
class LogBatch:
    records: tuple[TailRecord, ...]
    timestamps: tuple[int, ...]          # non-decreasing, one per record


@dataclass(frozen=True, slots=True)
class Rejected:
    first: int                           # indexes into the batch, inclusive
    last: int
    reason: str                          # too_old, too_new, expired, too_large


def plan_batches(records: Sequence[TailRecord], floor_ms: int, now_ms: int) -> tuple[list[LogBatch], list[TailRecord]]:
    """PutLogEvents batches for `records` in order, each within the limits, with timestamps no earlier
    than `floor_ms` (the last one sent) or than the one before, so a stream reads back in seq order; and
    the records too large for any event (never an idgate record: they are a few KB at most).  The floor
    is held to at most MAX_AHEAD_MS past `now_ms`: after the clock ran fast for a while, later records
    are stamped a little ahead (and accepted) instead of all being refused as too new.  Pure."""
    batches: list[LogBatch] = []
    too_large: list[TailRecord] = []
    current: list[TailRecord] = []
    stamps: list[int] = []
    size, last = 0, min(floor_ms, now_ms + MAX_AHEAD_MS)
    for record in records:
        length = len(record.line)          # ASCII: bytes are characters
        if length > MAX_EVENT_BYTES:
            too_large.append(record)
            continue
        stamp = last = max(record.timestamp_ms, min(last, now_ms + MAX_AHEAD_MS))
        if current and (len(current) >= MAX_BATCH_EVENTS or size + length + EVENT_OVERHEAD > MAX_BATCH_BYTES
                        or stamp - stamps[0] > MAX_SPAN_MS):
            batches.append(LogBatch(tuple(current), tuple(stamps)))
            current, stamps, size = [], [], 0
        current.append(record)
        stamps.append(stamp)
        size += length + EVENT_OVERHEAD
    if current:
        batches.append(LogBatch(tuple(current), tuple(stamps)))
    return batches, too_large


def rejected_ranges(info: dict[str, object], count: int) -> list[Rejected]:
    """PutLogEvents' rejectedLogEventsInfo as ranges of the batch's events."""
    out: list[Rejected] = []
    for key, reason in (("tooOldLogEventEndIndex", "too_old"), ("expiredLogEventEndIndex", "expired")):
        end = info.get(key)
        if isinstance(end, int) and 0 <= end < count:
            out.append(Rejected(0, end, reason))
    start = info.get("tooNewLogEventStartIndex")
    if isinstance(start, int) and 0 <= start < count:
        out.append(Rejected(start, count - 1, "too_new"))
    return out


def _json_string(line: bytes) -> bytes:
    """An audit line as a JSON string.  The tail passes only printable ASCII lines (what the canonical
    encoding writes), so escaping the backslash and the quote is all it takes."""
    return b'"' + line.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _events_body(group: str, stream: str, messages: Sequence[bytes], stamps: Sequence[int]) -> bytes:
    events = b",".join(b'{"timestamp":%d,"message":%s}' % (stamp, _json_string(message))
                       for message, stamp in zip(messages, stamps, strict=True))
    head = f'{{"logGroupName":{encode_basestring_ascii(group)},"logStreamName":{encode_basestring_ascii(stream)},'
    return head.encode("ascii") + b'"logEvents":[' + events + b"]}"


class CloudWatchSink:
    def __init__(self, api: AwsJsonApi, log_group: str, instance: str, *, create: bool) -> None:
        self._api, self._group, self._create = api, log_group, create
        self.stream = instance
        self.anchor_stream = instance + ANCHOR_SUFFIX

    def prepare(self) -> None:
        """Create the group and the two streams when missing (when allowed to)."""
        if not self._create:
            return
        for operation, fields in (("CreateLogGroup", {"logGroupName": self._group}),
                                  ("CreateLogStream", {"logGroupName": self._group, "logStreamName": self.stream}),
                                  ("CreateLogStream", {"logGroupName": self._group,
                                                       "logStreamName": self.anchor_stream})):
            body = "{" + ",".join(f"{encode_basestring_ascii(k)}:{encode_basestring_ascii(v)}"
                                  for k, v in fields.items()) + "}"
            try:
                self._api.call(operation, body.encode("ascii"), answers=False)
            except ShipError as exc:
                if exc.code != "ResourceAlreadyExistsException":
                    raise

    def put(self, batch: LogBatch) -> list[Rejected]:
        """Send one batch; what AWS accepted is stored when this returns."""
        return self._put(self.stream, [r.line for r in batch.records], batch.timestamps)

    def put_anchor(self, anchor: bytes, stamp: int) -> None:
        rejected = self._put(self.anchor_stream, [anchor], (stamp,))
        if rejected:
            raise ShipError("AnchorRejected", f"CloudWatch refused the anchor as {rejected[0].reason}")

    def _put(self, stream: str, messages: Sequence[bytes], stamps: Sequence[int]) -> list[Rejected]:
        answer = self._api.call("PutLogEvents", _events_body(self._group, stream, messages, stamps))
        info = answer.get("rejectedLogEventsInfo")
        return rejected_ranges(info, len(messages)) if isinstance(info, dict) else []
