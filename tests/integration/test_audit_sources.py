"""Record sources on a real moto server (proxy.audit.sources): an S3 prefix of shipped segments grouped
by instance in seq order, anchors and strays kept apart, bodies streamed 1 MiB at a time; CloudWatch
streams read to their end across pages; and every failure one line naming the source."""

from __future__ import annotations

import time
from typing import Any

import pytest

from proxy.audit.chain import READ_CHUNK
from proxy.audit.sources import SourceError, SourceLine, open_source
from tests.factories import http_decision
from tests.harness.moto import MotoServer
from tests.harness.segments import sealed_lines

BUCKET = "idgate-audit-test"
GROUP = "/idgate/audit"


def segment_body(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def put_segments(s3: Any, folder: str, lines: list[bytes], cuts: tuple[int, ...]) -> None:
    """`lines` uploaded as the shipper does: one object per rotated segment, `<first>-<last>.jsonl`."""
    start = 0
    for end in (*cuts, len(lines)):
        s3.put_object(Bucket=BUCKET, Key=f"{folder}{start + 1:012d}-{end:012d}.jsonl", Body=segment_body(lines[start:end]))
        start = end


@pytest.fixture
def s3(moto: MotoServer) -> Any:
    client = moto.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def logs(moto: MotoServer) -> Any:
    client = moto.client("logs")
    client.create_log_group(logGroupName=GROUP)
    return client


def put_events(logs: Any, stream: str, messages: list[str]) -> None:
    logs.create_log_stream(logGroupName=GROUP, logStreamName=stream)
    now = int(time.time() * 1000)
    for start in range(0, len(messages), 10_000):          # PutLogEvents takes 10,000 events at most
        logs.put_log_events(logGroupName=GROUP, logStreamName=stream,
                            logEvents=[{"timestamp": now, "message": m} for m in messages[start:start + 10_000]])


# --- S3 ---------------------------------------------------------------------------------------------------

def test_an_s3_prefix_holds_a_chain_per_instance_in_seq_order(moto: MotoServer, s3: Any) -> None:
    host_a = sealed_lines([http_decision(f"a{i}") for i in range(12)])
    host_b = sealed_lines([http_decision(f"b{i}") for i in range(3)])
    put_segments(s3, "audit/host-b/", host_b, ())
    put_segments(s3, "audit/host-a/", host_a, (2, 9))       # keys listed in name order are seq order too
    s3.put_object(Bucket=BUCKET, Key="audit/host-a/anchors/000000000009.json", Body=b'{"anchor": 1}')
    s3.put_object(Bucket=BUCKET, Key="audit/host-a/upload.tmp", Body=b"stray")
    s3.put_object(Bucket=BUCKET, Key="audit/README", Body=b"stray")
    source = open_source(f"s3://{BUCKET}/audit/", moto.client)
    assert [c.name for c in source.chains] == ["host-a", "host-b"]
    a, b = source.chains
    assert a.location == f"s3://{BUCKET}/audit/host-a/"
    assert [(s.first_seq, s.last_seq) for s in a.segments] == [(1, 2), (3, 9), (10, 12)]
    assert [line.data for line in a.lines()] == host_a and [line.data for line in b.lines()] == host_b
    assert next(iter(b.lines())).where == f"s3://{BUCKET}/audit/host-b/000000000001-000000000003.jsonl:1"
    assert [s.name for s in a.anchors] == [f"s3://{BUCKET}/audit/host-a/anchors/000000000009.json"]
    assert [line.data for line in a.anchors[0].lines()] == [b'{"anchor": 1}']     # read as they are, not as records
    assert set(source.ignored) == {"audit/host-a/upload.tmp", "audit/README"}


def test_a_source_may_name_one_instances_folder(moto: MotoServer, s3: Any) -> None:
    lines = sealed_lines([http_decision(f"a{i}") for i in range(4)])
    put_segments(s3, "audit/host-a/", lines, (2,))
    put_segments(s3, "audit/host-b/", lines, ())
    [chain] = open_source(f"s3://{BUCKET}/audit/host-a/", moto.client).chains
    assert chain.name == "host-a" and [line.data for line in chain.lines()] == lines


def test_a_segment_body_is_read_a_chunk_at_a_time(moto: MotoServer, s3: Any) -> None:
    lines = sealed_lines([http_decision(f"r{i}", path="/" + "p" * 600) for i in range(4000)])
    put_segments(s3, "audit/host-a/", lines, ())
    reads: list[int] = []

    class Recording:
        """The real client, with the size of every read of an object's body written down."""

        def __init__(self, real: Any) -> None:
            self._real = real

        def get_paginator(self, name: str) -> Any:
            return self._real.get_paginator(name)

        def get_object(self, **kwargs: Any) -> Any:
            answer = self._real.get_object(**kwargs)
            body = answer["Body"]

            class Body:
                def read(self, size: int = -1) -> bytes:
                    reads.append(size)
                    return bytes(body.read(size))

                def close(self) -> None:
                    body.close()

            return {**answer, "Body": Body()}

    recording = Recording(moto.client("s3"))
    [chain] = open_source(f"s3://{BUCKET}/audit/", lambda service: recording).chains
    assert sum(1 for _ in chain.lines()) == 4000
    assert len(segment_body(lines)) > 2 * READ_CHUNK and len(reads) >= 3
    assert all(0 < size <= READ_CHUNK for size in reads)              # never the whole object at once


def test_s3_failures_are_one_line_naming_the_source(moto: MotoServer, s3: Any) -> None:
    with pytest.raises(SourceError, match=r"^s3://no-such-bucket-here/audit/: NoSuchBucket: The specified bucket does not exist$"):
        open_source("s3://no-such-bucket-here/audit/", moto.client)
    with pytest.raises(SourceError, match=f"^s3://{BUCKET}/empty/: no audit segments here$"):
        open_source(f"s3://{BUCKET}/empty/", moto.client)
    put_segments(s3, "audit/host-a/", sealed_lines([http_decision()]), ())
    [chain] = open_source(f"s3://{BUCKET}/audit/", moto.client).chains
    s3.delete_object(Bucket=BUCKET, Key="audit/host-a/000000000001-000000000001.jsonl")    # gone once listed
    with pytest.raises(SourceError, match=r"^s3://.*/000000000001-000000000001\.jsonl: NoSuchKey: "):
        list(chain.lines())


# --- CloudWatch Logs --------------------------------------------------------------------------------------------

def test_a_cloudwatch_stream_is_read_to_its_end_across_pages(moto: MotoServer, logs: Any) -> None:
    lines = sealed_lines([http_decision(f"r{i}") for i in range(10_050)])      # more than one page (10,000)
    put_events(logs, "host-a", [line.decode() for line in lines])
    put_events(logs, "host-a.anchors", ['{"anchor": 1}'])
    calls = []
    client = moto.client("logs")

    class Counting:
        def get_paginator(self, name: str) -> Any:
            return client.get_paginator(name)

        def get_log_events(self, **kwargs: Any) -> Any:
            calls.append(kwargs.get("nextToken"))
            return client.get_log_events(**kwargs)

    [chain] = open_source(f"cloudwatch://{GROUP}/host-a", lambda service: Counting()).chains
    got = list(chain.lines())
    assert [line.data for line in got] == lines and len(calls) == 3          # two pages, then the same token
    assert got[10_000].where == f"cloudwatch://{GROUP}/host-a:10001"
    assert chain.name == "host-a" and [s.name for s in chain.anchors] == [f"cloudwatch://{GROUP}/host-a.anchors"]


def test_a_group_holds_a_chain_per_stream_without_the_anchors(moto: MotoServer, logs: Any) -> None:
    for stream in ("host-b", "host-a", "host-a.anchors"):
        put_events(logs, stream, [sealed_lines([http_decision(stream)])[0].decode()])
    source = open_source(f"cloudwatch://{GROUP}/", moto.client)
    assert [(c.name, len(c.anchors)) for c in source.chains] == [("host-a", 1), ("host-b", 0)]


def test_an_event_that_is_not_one_line_is_framed_with_its_problem(moto: MotoServer, logs: Any) -> None:
    put_events(logs, "host-a", ['{"a":1}', '{"a":1}\n{"forged":2}'])
    [chain] = open_source(f"cloudwatch://{GROUP}/host-a", moto.client).chains
    assert list(chain.lines())[1] == SourceLine(f"cloudwatch://{GROUP}/host-a:2", None,
                                                "event message holds a newline (not one audit line)")


def test_cloudwatch_failures_are_one_line_naming_the_source(moto: MotoServer, logs: Any) -> None:
    put_events(logs, "host-a", ["x"])
    with pytest.raises(SourceError, match=r"^cloudwatch:///nope/host-a: ResourceNotFoundException: "
                                          r"The specified log group does not exist\.$"):
        open_source("cloudwatch:///nope/host-a", moto.client)
    with pytest.raises(SourceError, match=f"^cloudwatch://{GROUP}/host-b: no log stream 'host-b' in log group '{GROUP}'$"):
        open_source(f"cloudwatch://{GROUP}/host-b", moto.client)
    with pytest.raises(SourceError, match=f"^cloudwatch://{GROUP}/host-a.anchors: this stream holds signed anchors"):
        open_source(f"cloudwatch://{GROUP}/host-a.anchors", moto.client)
