"""The S3 sink: every rotated segment, checked end to end, uploaded as
`<prefix><instance>/<first-seq>-<last-seq>.jsonl` (seqs zero-padded to 12 digits, so keys sort in
chain order) and every anchor as `<prefix><instance>/anchors/<n>.jws`.

Nothing is ever overwritten: each put carries If-None-Match: * and the SHA-256 of the bytes that were
checked (S3 refuses a body that does not match it, so a file changed between the check and the
upload is not stored).  A put refused because the key exists is success only when the stored object
has the same SHA-256 (a crash after the upload and before the checkpoint); anything else there is a
conflict, reported and never papered over.  With Object Lock configured, each object is locked in
COMPLIANCE or GOVERNANCE mode until its retention date.

Blocking: runs on the shipper's thread, with a boto3 S3 client on idgate's own credentials.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from proxy.audit.aws_json import ShipError
from proxy.audit.chain import READ_CHUNK, ChainState, LineError, follows, parse_line
from proxy.audit.tail import ChainBreak, rotated_last_seq
from proxy.config.schema import ObjectLockConfig


@dataclass(frozen=True, slots=True)
class CheckedSegment:
    path: Path
    first: int
    last: ChainState
    sha256: str                          # base64, as S3's ChecksumSHA256
    size: int


def check_segment(path: Path, after: ChainState | None) -> CheckedSegment:
    """Read a rotated segment once: every record hashed onto the one before (the first onto `after`,
    when the sink already holds records), its last seq the one its name carries, and its SHA-256."""
    digest = hashlib.sha256()
    first: int | None = None
    state = after
    size = 0
    carry = b""
    with path.open("rb") as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            lines = (carry + chunk).split(b"\n")
            carry = lines.pop()
            for line in lines:
                state = _next_state(path, line, state, first is None)
                first = first if first is not None else state.seq
    if carry:
        raise ChainBreak(str(path), "the segment ends in an unterminated line")
    if first is None or state is None:
        raise ChainBreak(str(path), "the segment holds no record")
    if rotated_last_seq(path) != state.seq:
        raise ChainBreak(str(path), f"its last record is seq {state.seq}, not the seq its name says")
    return CheckedSegment(path, first, state, base64.b64encode(digest.digest()).decode("ascii"), size)


def _next_state(path: Path, line: bytes, before: ChainState | None, first_line: bool) -> ChainState:
    if first_line:
        # The first line in full: its seq places the segment, and its prev must be where the sink stands.
        try:
            record, intact = parse_line(line)
        except LineError as exc:
            raise ChainBreak(f"{path}:1", str(exc)) from exc
        if not intact:
            raise ChainBreak(f"{path}:1", f"hash mismatch: record seq {record['seq']} was edited")
        if before is not None and (record["seq"], record["prev"]) != (before.seq + 1, before.prev):
            raise ChainBreak(f"{path}:1", f"record seq {record['seq']} does not follow the last shipped "
                                          f"record (seq {before.seq})")
        return ChainState(record["seq"], record["hash"])
    assert before is not None
    digest = follows(line, before.prev)
    if digest is None:
        raise ChainBreak(str(path), f"the record after seq {before.seq} is edited or does not follow it")
    return ChainState(before.seq + 1, digest)


class S3Sink:
    def __init__(self, client: Any, bucket: str, prefix: str, instance: str, lock: ObjectLockConfig | None,
                 clock: Callable[[], float]) -> None:
        self._client, self._bucket, self._lock, self._clock = client, bucket, lock, clock
        self._folder = f"{prefix}{instance}/"

    def segment_key(self, segment: CheckedSegment) -> str:
        return f"{self._folder}{segment.first:012d}-{segment.last.seq:012d}.jsonl"

    def anchor_key(self, number: int) -> str:
        return f"{self._folder}anchors/{number:012d}.jws"

    def upload_segment(self, segment: CheckedSegment) -> None:
        with segment.path.open("rb") as body:
            self._put(self.segment_key(segment), body, segment.sha256, segment.size, "application/x-ndjson")

    def put_anchor(self, number: int, anchor: bytes) -> None:
        sha256 = base64.b64encode(hashlib.sha256(anchor).digest()).decode("ascii")
        self._put(self.anchor_key(number), anchor, sha256, len(anchor), "application/jose")

    def _put(self, key: str, body: BinaryIO | bytes, sha256: str, size: int, content_type: str) -> None:
        extra: dict[str, Any] = {}
        if self._lock is not None:
            until = dt.datetime.fromtimestamp(self._clock(), dt.UTC) + dt.timedelta(days=self._lock.days)
            extra = {"ObjectLockMode": self._lock.mode, "ObjectLockRetainUntilDate": until}
        try:
            self._client.put_object(Bucket=self._bucket, Key=key, Body=body, ContentLength=size,
                                    ContentType=content_type, ChecksumAlgorithm="SHA256", ChecksumSHA256=sha256,
                                    IfNoneMatch="*", **extra)
            return
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("PreconditionFailed", "412"):
                raise ShipError(code or "S3Error", str(exc)) from exc
        except BotoCoreError as exc:
            raise ShipError("ConnectionError", str(exc)) from exc
        self._same_object_or_conflict(key, sha256)

    def _same_object_or_conflict(self, key: str, sha256: str) -> None:
        try:
            head = self._client.head_object(Bucket=self._bucket, Key=key, ChecksumMode="ENABLED")
        except (ClientError, BotoCoreError) as exc:
            raise ShipError("S3Error", f"s3://{self._bucket}/{key} exists and cannot be read back: {exc}") from exc
        if head.get("ChecksumSHA256") != sha256:
            raise ShipError("Conflict", f"s3://{self._bucket}/{key} already holds other bytes: another writer "
                                        "uses this instance id, or the object was replaced")
