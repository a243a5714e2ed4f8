"""Where audit records are read back from: local segment files, an S3 prefix of shipped segments, a
CloudWatch Logs stream.  Each source is a set of chains (one per writer), each chain its raw lines in
seq order, streamed: memory does not grow with a segment, whatever the source.

    source = open_source(spec, boto3_clients())      # SourceError: a spec that holds no audit records
    for chain in source.chains:
        chain.name          # the writer's instance id as the layout names it (file stem, S3 folder, stream)
        chain.location      # the live file, s3://bucket/folder/ or cloudwatch://group/stream
        chain.segments      # oldest first: Segment(name, first_seq, last_seq), each with .lines()
        chain.anchors       # the sink's signed anchors for this chain, as Segments too (never records):
                            # S3 `<folder>anchors/...` objects, the `<stream>.anchors` stream; () locally
        for line in chain.lines():              # SourceLine(where, data, problem), segment after segment
            ...                                 # where = file:line, s3://bucket/key:line, cloudwatch://group/stream:event

Specs: PATH (a live segment with its rotated siblings, one rotated segment alone, or a directory whose
*.jsonl files are grouped into chains by stem, e.g. idgate-audit and the workers' idgate-audit.w0),
s3://BUCKET[/PREFIX] (every `<instance>/<first-seq>-<last-seq>.jsonl` under it, grouped by folder; other
objects are counted in `ignored`), cloudwatch://GROUP/STREAM (the group is what precedes the last `/`)
and cloudwatch://GROUP/ (every stream of the group).  A line's `data` is its bytes without the newline,
None when it cannot be a record at all; `problem` says what is wrong with it (then data may still be
there: an unterminated last line).  A local chain is read as it is when each segment is reached, so a
segment the server rotates meanwhile is not missed, and one retention deletes meanwhile is a line with
its problem.  Reading S3 or CloudWatch raises SourceError with one line naming the source, never a
botocore exception: the caller prints it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from proxy.audit.chain import MAX_LINE_BYTES, read_lines
from proxy.audit.sink import segment_files

ClientFactory = Callable[[str], Any]
"""A boto3 client for a service name ("s3", "logs")."""

_ROTATED = re.compile(r"(?P<stem>.+)\.\d{8}T\d{6}Z\.(?P<last>\d+)\.jsonl\Z")
_S3_SEGMENT = re.compile(r"(?P<first>\d{12})-(?P<last>\d{12})\.jsonl\Z")
ANCHORS = "anchors"                # an S3 instance folder's `anchors/`; a CloudWatch stream's `.anchors` twin
_T = TypeVar("_T")


class SourceError(Exception):
    """A source that cannot be read: the message is one line that names it."""


@dataclass(frozen=True, slots=True)
class SourceLine:
    where: str
    data: bytes | None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Segment:
    name: str                              # a path, s3://bucket/key or cloudwatch://group/stream
    first_seq: int | None                  # as the name gives them (S3 keys; a rotated file's last seq)
    last_seq: int | None
    _lines: Callable[[], Iterator[SourceLine]] = field(repr=False, compare=False)

    def lines(self) -> Iterator[SourceLine]:
        return self._lines()


@dataclass(frozen=True, slots=True)
class Chain:
    name: str
    location: str
    segments: tuple[Segment, ...]          # as listed when the source was opened
    anchors: tuple[Segment, ...] = ()
    _follow: Callable[[], Iterator[SourceLine]] | None = field(default=None, repr=False, compare=False)

    def lines(self) -> Iterator[SourceLine]:
        """Every line, segment after segment; a local chain also reads what rotated since it was listed."""
        if self._follow is not None:
            yield from self._follow()
            return
        for segment in self.segments:
            yield from segment.lines()


@dataclass(frozen=True, slots=True)
class Source:
    spec: str
    chains: tuple[Chain, ...]
    ignored: tuple[str, ...] = ()          # objects under an S3 prefix that are neither segments nor anchors
    notes: tuple[str, ...] = ()            # signs of tampering in the source (S3: delete markers, extra versions)


def open_source(spec: str, clients: ClientFactory) -> Source:
    """The chains `spec` holds, listed (not read yet); SourceError when it holds none or cannot be listed."""
    if spec.startswith("s3://"):
        bucket, _, prefix = spec.removeprefix("s3://").partition("/")
        if not bucket:
            raise SourceError(f"{spec}: an S3 source is s3://BUCKET[/PREFIX]")
        source = _s3_source(spec, bucket, prefix, clients)
    elif spec.startswith("cloudwatch://"):
        group, _, stream = spec.removeprefix("cloudwatch://").rpartition("/")
        if not group:
            raise SourceError(f"{spec}: a CloudWatch source is cloudwatch://GROUP/STREAM, or cloudwatch://GROUP/ "
                              "for every stream of the group")
        source = _cloudwatch_source(spec, group, stream, clients)
    elif "://" in spec:
        raise SourceError(f"{spec}: unknown kind of source (a path, s3://BUCKET/PREFIX or cloudwatch://GROUP/STREAM)")
    else:
        source = Source(spec, _local_chains(Path(spec)))
    if not source.chains:
        raise SourceError(f"{spec}: no audit segments here")
    return source


# --- local files ------------------------------------------------------------------------------------------

def chain_stem(name: str) -> str:
    """The chain a segment file name belongs to: `idgate-audit.w0.<stamp>.<seq>.jsonl` → `idgate-audit.w0`."""
    rotated = _ROTATED.match(name)
    return rotated["stem"] if rotated else name.removesuffix(".jsonl")


def _local_chains(path: Path) -> tuple[Chain, ...]:
    if path.is_dir():
        try:
            names = os.listdir(path)
        except OSError as exc:
            raise SourceError(f"{path}: cannot list ({exc.strerror or exc})") from exc
        stems = sorted({chain_stem(n) for n in names if n.endswith(".jsonl") and (path / n).is_file()})
        return tuple(_live_chain(path / f"{stem}.jsonl") for stem in stems)
    if rotated := _ROTATED.match(path.name):     # one rotated segment, as the investigator named it
        if not path.exists():
            raise SourceError(f"{path}: no such file or directory")
        live = path.with_name(rotated["stem"] + ".jsonl")
        return (Chain(live.stem, str(live), (_file_segment(path),)),)
    chain = _live_chain(path)
    if not chain.segments:
        raise SourceError(f"{path}: no such file or directory")
    return (chain,)


def _live_chain(live: Path) -> Chain:
    listed = segment_files(live)
    return Chain(live.stem, str(live), tuple(_file_segment(f) for f in listed), (), lambda: _following(live, listed))


def _following(live: Path, listed: list[Path]) -> Iterator[SourceLine]:
    """The rotated segments, then the live one, as they are when each is reached: a server that rotates
    meanwhile renames the live file aside, and a listing made before would miss what that segment holds."""
    done: set[Path] = set()
    rotated = [f for f in listed if f != live]
    while rotated:
        for path in rotated:
            done.add(path)
            yield from _file_lines(path)
        rotated = [f for f in segment_files(live) if f != live and f not in done]
    if not live.exists():
        return
    with _opened(live) as f:
        # Rotated between the last look and the open: those records come before what the open file holds.
        for path in segment_files(live):
            if path != live and path not in done:
                yield from _file_lines(path)
        yield from _read_file(live, f)


def _file_segment(path: Path) -> Segment:
    rotated = _ROTATED.match(path.name)
    return Segment(str(path), None, int(rotated["last"]) if rotated else None, lambda: _file_lines(path))


def _file_lines(path: Path) -> Iterator[SourceLine]:
    try:
        f = _opened(path)
    except SourceError:
        if path.exists() or not _ROTATED.match(path.name):
            raise
        yield SourceLine(str(path), None, "deleted before it was read (by retention, while the query ran)")
        return
    with f:
        yield from _read_file(path, f)


def _opened(path: Path) -> BinaryIO:
    try:
        if not path.is_file():                  # a FIFO or a device would block or never end
            raise SourceError(f"{path}: not a regular file")
        return path.open("rb")
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def _read_file(path: Path, f: BinaryIO) -> Iterator[SourceLine]:
    try:
        yield from _framed(str(path), read_lines(f))
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def _framed(name: str, lines: Iterable[tuple[int, bytes | None, bool]]) -> Iterator[SourceLine]:
    for number, data, terminated in lines:
        where = f"{name}:{number}"
        if data is None:
            yield SourceLine(where, None, f"line longer than {MAX_LINE_BYTES} bytes (not an idgate record)")
        elif not terminated:
            yield SourceLine(where, data, "unterminated last line (file truncated mid-record)")
        else:
            yield SourceLine(where, data)


# --- AWS --------------------------------------------------------------------------------------------------

def _aws(name: str, call: Callable[[], _T]) -> _T:
    """`call()`, a botocore failure turned into one line naming the source."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call()
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise SourceError(f"{name}: {error.get('Code', 'error')}: {error.get('Message') or exc}") from exc
    except BotoCoreError as exc:
        raise SourceError(f"{name}: {exc}") from exc


def _aws_lines(name: str, lines: Iterator[SourceLine]) -> Iterator[SourceLine]:
    """The lines of a remote segment; a failure while reading them (a reset connection) is one line too."""
    while (line := _aws(name, lambda: next(lines, None))) is not None:
        yield line


def _s3_source(spec: str, bucket: str, prefix: str, clients: ClientFactory) -> Source:
    """Every object *version* under the prefix, not only the current objects: Object Lock protects
    versions, so a plain DeleteObject (a delete marker) or a second PutObject (a new version) can hide a
    locked segment or anchor from a reader of current objects.  idgate writes each key once; a key with
    a delete marker or more than one version is tampering, reported, and its first version is read."""
    s3 = _aws(spec, lambda: clients("s3"))
    segments: dict[str, list[tuple[int, int, str, str | None]]] = {}
    anchors: dict[str, list[tuple[str, str | None]]] = {}
    ignored: list[str] = []
    notes: list[str] = []
    for key, version, hidden, versions in _s3_keys(spec, s3, bucket, prefix):
        if hidden:
            notes.append(f"s3://{bucket}/{key}: hidden behind a delete marker (its locked version is read)")
        if versions > 1:
            notes.append(f"s3://{bucket}/{key}: {versions} versions of a key idgate writes once (the first is read)")
        folder, _, name = key.rpartition("/")
        parts = folder.split("/")
        if ANCHORS in parts[1:]:               # <folder>/anchors/...: the chain's anchors, not records
            owner = "/".join(parts[: parts.index(ANCHORS, 1)]) + "/"
            anchors.setdefault(owner, []).append((key, version))
        elif segment := _S3_SEGMENT.match(name):
            segments.setdefault(folder + "/" if folder else "", []).append(
                (int(segment["first"]), int(segment["last"]), key, version))
        else:
            ignored.append(key)
    chains = []
    # A folder whose segments are all gone still has its anchors: they are what shows the loss.
    for folder in sorted(set(segments) | set(anchors)):
        instance = folder.rstrip("/").rpartition("/")[2] or bucket
        chains.append(Chain(
            instance, f"s3://{bucket}/{folder}",
            tuple(_s3_segment(s3, bucket, key, first, last, version)
                  for first, last, key, version in sorted(segments.get(folder, ()))),
            tuple(_s3_segment(s3, bucket, key, None, None, version) for key, version in sorted(anchors.get(folder, ())))))
    return Source(spec, tuple(chains), tuple(ignored), tuple(notes))


def _s3_keys(spec: str, s3: Any, bucket: str, prefix: str) -> Iterator[tuple[str, str | None, bool, int]]:
    """(key, the version to read, whether a delete marker hides it, how many versions it has)."""
    first: dict[str, tuple[str | None, Any]] = {}      # key -> (oldest version id, its LastModified)
    counts: dict[str, int] = {}
    marked: dict[str, Any] = {}                        # key -> the newest delete marker's LastModified
    pages = _aws(spec, lambda: iter(s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)))
    while (page := _aws(spec, lambda: next(pages, None))) is not None:
        for entry in page.get("Versions", ()):
            key = entry["Key"]
            counts[key] = counts.get(key, 0) + 1
            held = first.get(key)
            if held is None or entry["LastModified"] < held[1]:
                first[key] = (entry.get("VersionId"), entry["LastModified"])
        for entry in page.get("DeleteMarkers", ()):
            if entry.get("IsLatest"):
                marked[entry["Key"]] = entry["LastModified"]
    for key in sorted(first):
        version = first[key][0]
        yield key, (None if version in (None, "null") else version), key in marked, counts[key]


def _s3_segment(s3: Any, bucket: str, key: str, first: int | None, last: int | None,
                version: str | None = None) -> Segment:
    name = f"s3://{bucket}/{key}"
    return Segment(name, first, last, lambda: _s3_lines(s3, bucket, key, name, version))


def _s3_lines(s3: Any, bucket: str, key: str, name: str, version: str | None = None) -> Iterator[SourceLine]:
    version_args = {"VersionId": version} if version else {}
    body = _aws(name, lambda: s3.get_object(Bucket=bucket, Key=key, **version_args)["Body"])
    with closing(body):
        # The body is read 1 MiB at a time (chain.read_lines), never whole.
        yield from _aws_lines(name, _framed(name, read_lines(body)))


def _cloudwatch_source(spec: str, group: str, stream: str, clients: ClientFactory) -> Source:
    if stream.endswith("." + ANCHORS):
        raise SourceError(f"{spec}: this stream holds signed anchors, not audit records")
    logs = _aws(spec, lambda: clients("logs"))
    names = _stream_names(spec, logs, group, stream)
    if stream and stream not in names:
        raise SourceError(f"{spec}: no log stream {stream!r} in log group {group!r}")
    chains = []
    for name in sorted(names):
        if name.endswith("." + ANCHORS) or (stream and name != stream):
            continue
        twin = f"{name}.{ANCHORS}"
        anchors = (_stream_segment(logs, group, twin),) if twin in names else ()
        chains.append(Chain(name, f"cloudwatch://{group}/{name}", (_stream_segment(logs, group, name),), anchors))
    return Source(spec, tuple(chains))


def _stream_names(spec: str, logs: Any, group: str, prefix: str) -> set[str]:
    """The group's streams whose names start with `prefix` (a named stream and its anchors twin)."""
    names: set[str] = set()
    kwargs: dict[str, Any] = {"logGroupName": group}
    if prefix:
        kwargs["logStreamNamePrefix"] = prefix
    pages = _aws(spec, lambda: iter(logs.get_paginator("describe_log_streams").paginate(**kwargs)))
    while (page := _aws(spec, lambda: next(pages, None))) is not None:
        names.update(s["logStreamName"] for s in page.get("logStreams", ()))
    return names


def _stream_segment(logs: Any, group: str, stream: str) -> Segment:
    name = f"cloudwatch://{group}/{stream}"
    return Segment(name, None, None, lambda: _aws_lines(name, _events(logs, group, stream, name)))


def _events(logs: Any, group: str, stream: str, name: str) -> Iterator[SourceLine]:
    """Each event of the stream from its head, one page (at most 1 MB) in memory at a time: the stream's
    end is where the forward token comes back unchanged."""
    token: str | None = None
    number = 0
    while True:
        kwargs: dict[str, Any] = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}
        if token is not None:
            kwargs["nextToken"] = token
        page = logs.get_log_events(**kwargs)
        for event in page.get("events", ()):
            number += 1
            yield _event_line(f"{name}:{number}", event.get("message"))
        following = page.get("nextForwardToken")
        if following is None or following == token:
            return
        token = following


def _event_line(where: str, message: object) -> SourceLine:
    if not isinstance(message, str):
        return SourceLine(where, None, "event without a message")
    data = message.encode("utf-8", "surrogatepass")
    if len(data) > MAX_LINE_BYTES:
        return SourceLine(where, None, f"line longer than {MAX_LINE_BYTES} bytes (not an idgate record)")
    if b"\n" in data:
        return SourceLine(where, None, "event message holds a newline (not one audit line)")
    return SourceLine(where, data)


def boto3_clients() -> ClientFactory:
    """Clients made with boto3's usual credential chain, region and endpoint settings (AWS_DEFAULT_REGION,
    AWS_ENDPOINT_URL_S3 and, named after the service id "CloudWatch Logs", AWS_ENDPOINT_URL_CLOUDWATCH_LOGS),
    one per service, each on first use; a few quick attempts so that a wrong endpoint fails in seconds."""
    return _Boto3Clients()


class _Boto3Clients:
    def __init__(self) -> None:
        self._session: Any = None
        self._clients: dict[str, Any] = {}

    def __call__(self, service: str) -> Any:
        if self._session is None:     # boto3 costs 40 MB and a second to import: only for a source that needs it
            import boto3

            self._session = boto3.session.Session()
        if service not in self._clients:
            from botocore.config import Config

            config = Config(connect_timeout=10, read_timeout=60, retries={"mode": "standard", "max_attempts": 3})
            self._clients[service] = self._session.client(service, config=config)
        return self._clients[service]
