"""Local record sources (proxy.audit.sources): a live segment with its rotated siblings, one rotated
segment, a directory of chains (the workers' included), and each spec or file that cannot be read
refused with one line naming it.  S3 and CloudWatch: tests/integration/test_audit_sources.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from proxy.audit.sources import SourceError, SourceLine, chain_stem, open_source
from tests.factories import http_decision
from tests.harness.segments import sealed_lines


def no_aws(service: str) -> Any:
    raise AssertionError(f"a local source asked for an AWS client ({service})")


def write_chain(directory: Path, stem: str, sizes: tuple[int, ...]) -> list[bytes]:
    """A chain of `sum(sizes)` records: rotated segments of the given sizes, the last size the live file."""
    lines = sealed_lines([http_decision(f"{stem}-{i}") for i in range(sum(sizes))])
    start = 0
    for number, size in enumerate(sizes):
        last = start + size
        name = f"{stem}.jsonl" if number == len(sizes) - 1 else f"{stem}.20261122T1000{number:02d}Z.{last:012d}.jsonl"
        (directory / name).write_bytes(b"".join(line + b"\n" for line in lines[start:last]))
        start = last
    return lines


def read(spec: Path | str) -> dict[str, list[tuple[str, bytes | None]]]:
    source = open_source(str(spec), no_aws)
    return {c.name: [(line.where, line.data) for line in c.lines()] for c in source.chains}


def test_a_live_segment_brings_its_rotated_siblings_oldest_first(tmp_path: Path) -> None:
    lines = write_chain(tmp_path, "idgate-audit", (2, 3, 1))
    [chain] = open_source(str(tmp_path / "idgate-audit.jsonl"), no_aws).chains
    assert chain.name == "idgate-audit" and chain.location == str(tmp_path / "idgate-audit.jsonl")
    assert [(s.first_seq, s.last_seq) for s in chain.segments] == [(None, 2), (None, 5), (None, None)]
    got = list(chain.lines())
    assert [line.data for line in got] == lines
    assert got[2].where == f"{tmp_path}/idgate-audit.20261122T100001Z.000000000005.jsonl:1"
    assert got[5].where == f"{tmp_path}/idgate-audit.jsonl:1" and chain.anchors == ()


def test_a_rotated_segment_named_alone_is_read_alone(tmp_path: Path) -> None:
    lines = write_chain(tmp_path, "idgate-audit", (2, 3, 1))
    rotated = tmp_path / "idgate-audit.20261122T100001Z.000000000005.jsonl"
    assert [data for _, data in read(rotated)["idgate-audit"]] == lines[2:5]


def test_a_directory_holds_a_chain_per_stem_the_workers_included(tmp_path: Path) -> None:
    main = write_chain(tmp_path, "idgate-audit", (1, 1))
    w0 = write_chain(tmp_path, "idgate-audit.w0", (2, 2))
    w1 = write_chain(tmp_path, "idgate-audit.w1", (3,))
    (tmp_path / "idgate-audit.w1.jsonl").rename(tmp_path / "idgate-audit.w1.20261122T110000Z.000000000003.jsonl")
    (tmp_path / "notes.txt").write_text("not audit\n")
    (tmp_path / "odd.jsonl").mkdir()
    chains = read(tmp_path)
    assert list(chains) == ["idgate-audit", "idgate-audit.w0", "idgate-audit.w1"]
    assert [d for _, d in chains["idgate-audit"]] == main and [d for _, d in chains["idgate-audit.w0"]] == w0
    assert [d for _, d in chains["idgate-audit.w1"]] == w1       # only rotated segments are left of it


def test_a_segment_rotated_while_the_chain_is_read_is_read_in_its_place(tmp_path: Path) -> None:
    """The server renames the live file aside after the listing, then again while a segment is being read."""
    lines = sealed_lines([http_decision(f"r{i}") for i in range(9)])
    live = tmp_path / "idgate-audit.jsonl"

    def rotate(upto: int, keep: tuple[int, int], number: int) -> None:
        live.rename(tmp_path / f"idgate-audit.20261122T1100{number:02d}Z.{upto:012d}.jsonl")
        live.write_bytes(b"".join(line + b"\n" for line in lines[keep[0]:keep[1]]))

    (tmp_path / "idgate-audit.20261122T100000Z.000000000002.jsonl").write_bytes(b"".join(l + b"\n" for l in lines[:2]))
    live.write_bytes(b"".join(line + b"\n" for line in lines[2:4]))
    [chain] = open_source(str(tmp_path), no_aws).chains
    rotate(4, (4, 6), 1)                                   # after the listing
    reading = chain.lines()
    got = [next(reading).data]
    rotate(6, (6, 9), 2)                                   # while the first segment is read
    got += [line.data for line in reading]
    assert got == lines


def test_a_segment_deleted_by_retention_while_the_query_runs_is_said(tmp_path: Path) -> None:
    write_chain(tmp_path, "idgate-audit", (2, 3, 1))
    [chain] = open_source(str(tmp_path), no_aws).chains
    (tmp_path / "idgate-audit.20261122T100000Z.000000000002.jsonl").unlink()
    got = list(chain.lines())
    assert got[0] == SourceLine(f"{tmp_path}/idgate-audit.20261122T100000Z.000000000002.jsonl", None,
                                "deleted before it was read (by retention, while the query ran)")
    assert len(got) == 1 + 3 + 1


def test_a_chain_stem_is_the_name_without_rotation() -> None:
    assert chain_stem("idgate-audit.w3.20261122T100000Z.000000000042.jsonl") == "idgate-audit.w3"
    assert chain_stem("idgate-audit.w3.jsonl") == "idgate-audit.w3"


def test_lines_that_cannot_be_records_are_framed_with_their_problem(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(b"one\n" + b"x" * (1024 * 1024 + 1) + b"\nlast")
    [chain] = open_source(str(tmp_path / "a.jsonl"), no_aws).chains
    got = list(chain.lines())
    assert got[0] == SourceLine(f"{tmp_path}/a.jsonl:1", b"one")
    assert got[1].data is None and "line longer than 1048576 bytes" in (got[1].problem or "")
    assert got[2] == SourceLine(f"{tmp_path}/a.jsonl:3", b"last", "unterminated last line (file truncated mid-record)")


@pytest.mark.parametrize(("spec", "message"), [
    ("s3://", "s3://: an S3 source is s3://BUCKET[/PREFIX]"),
    ("s3:///prefix", "s3:///prefix: an S3 source is s3://BUCKET[/PREFIX]"),
    ("cloudwatch://group-only", "cloudwatch://group-only: a CloudWatch source is cloudwatch://GROUP/STREAM, or "
                                "cloudwatch://GROUP/ for every stream of the group"),
    ("gs://bucket/x", "gs://bucket/x: unknown kind of source"),
])
def test_a_spec_of_no_known_kind_is_refused_by_name(spec: str, message: str) -> None:
    with pytest.raises(SourceError) as refused:
        open_source(spec, no_aws)
    assert str(refused.value).startswith(message)


def test_a_missing_path_and_an_empty_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=f"^{tmp_path}/nothing.jsonl: no such file or directory$"):
        open_source(str(tmp_path / "nothing.jsonl"), no_aws)
    with pytest.raises(SourceError, match=f"^{tmp_path}: no audit segments here$"):
        open_source(str(tmp_path), no_aws)


def test_a_fifo_is_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "audit.jsonl"
    os.mkfifo(fifo)
    [chain] = open_source(str(fifo), no_aws).chains
    with pytest.raises(SourceError, match=f"^{fifo}: not a regular file$"):
        list(chain.lines())


def test_a_file_that_fails_to_read_is_one_line() -> None:
    """/proc/self/mem opens and then fails every read at offset 0 (EIO), for root too."""
    [chain] = open_source("/proc/self/mem", no_aws).chains
    with pytest.raises(SourceError, match=r"^/proc/self/mem: cannot read \(Input/output error\)$"):
        list(chain.lines())
