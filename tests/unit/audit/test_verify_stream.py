"""`verify_files` reads segments in bounded chunks: lines split across chunks, lines longer than the
bound, and the progress it reports (proxy.audit.chain)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from proxy.audit import verify_files
from proxy.audit.chain import MAX_LINE_BYTES, READ_CHUNK, SegmentLines, read_lines, verify_segments
from tests.unit.audit.test_audit import make_log, write_records

SAMPLE = b'{"a":1}\n\n' + b"x" * 40 + b"\nshort\n" + b"y" * 25 + b"\nend"


def expected_lines(data: bytes, max_line: int) -> list[tuple[int, bytes | None, bool]]:
    parts = data.split(b"\n")
    lines: list[tuple[int, bytes | None, bool]] = [
        (n, p if len(p) <= max_line else None, True) for n, p in enumerate(parts[:-1], start=1)]
    if parts[-1]:
        lines.append((len(parts), parts[-1] if len(parts[-1]) <= max_line else None, False))
    return lines


@pytest.mark.parametrize("chunk_bytes", range(1, len(SAMPLE) + 2))
@pytest.mark.parametrize("max_line", [30, 1000])
@pytest.mark.parametrize("tail", [b"", b"\n"])
def test_lines_split_at_any_chunk_boundary_come_out_whole(chunk_bytes: int, max_line: int, tail: bytes) -> None:
    data = SAMPLE + tail
    got = list(read_lines(io.BytesIO(data), chunk_bytes=chunk_bytes, max_line=max_line))
    assert got == expected_lines(data, max_line)


async def test_a_record_split_across_the_read_chunk_boundary_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = make_log(path, rotate_bytes=1 << 30)
    await log.open()
    for i in range(700):          # ~1.7 KB records: the file spans the first 1 MiB read
        await log.append({"event": "decision", "i": i, "pad": "x" * 1500})
    await log.close()
    data = path.read_bytes()
    assert data[READ_CHUNK - 1:READ_CHUNK + 1].count(b"\n") == 0    # a record straddles the boundary
    calls: list[tuple[Path, int]] = []
    report = verify_files([path], lambda p, n: calls.append((p, n)))
    assert (report.ok, report.records, report.problems) == (True, 700, ())
    assert calls == [(path, 0), (path, 700)]        # as the segment starts and ends (and every 65,536 records)


@pytest.mark.parametrize("length", [MAX_LINE_BYTES + 1, 2 * READ_CHUNK + 17])
async def test_a_line_longer_than_the_bound_is_reported_at_its_line_and_the_chain_goes_on(
        tmp_path: Path, length: int) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 2)
    with path.open("ab") as f:
        f.write(b'{"v":1,"pad":"' + b"z" * (length - 16) + b'"}\n')
    await write_records(path, 2, start=2, rotate_bytes=1 << 30)
    report = verify_files([path])
    assert report.problems == (f"{path}:3: line longer than {MAX_LINE_BYTES} bytes (not an idgate record)",)
    assert report.records == 4


async def test_a_long_unterminated_tail_is_reported_as_both(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 1)
    with path.open("ab") as f:
        f.write(b"z" * (READ_CHUNK + MAX_LINE_BYTES))
    report = verify_files([path])
    assert report.problems == (f"{path}:2: unterminated last line (file truncated mid-record)",
                               f"{path}:2: line longer than {MAX_LINE_BYTES} bytes (not an idgate record)")


async def test_progress_names_each_file_as_it_starts(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 10, rotate_bytes=450)
    files = sorted(tmp_path.glob("audit.*.jsonl")) + [path]
    calls: list[tuple[Path, int]] = []
    assert verify_files(files, lambda p, n: calls.append((p, n))).ok
    assert [c for c in calls if c[0] == files[1]][0] == (files[1], 3)
    assert calls[-1] == (path, 10)


async def test_copies_a_sink_holds_are_dropped_only_when_identical(tmp_path: Path) -> None:
    """A CloudWatch stream holds a resent batch twice after a crash: the same lines under the same seqs."""
    path = tmp_path / "audit.jsonl"
    await write_records(path, 6)
    lines = path.read_bytes().splitlines()

    def segment(chosen: list[bytes]) -> list[SegmentLines]:
        return [("cloudwatch://g/s", [(f"cloudwatch://g/s:{i}", line, ()) for i, line in enumerate(chosen, 1)])]

    resent = lines[:4] + lines[2:]
    report = verify_segments(segment(resent), drop_copies=True)
    assert (report.ok, report.records, report.copies) == (True, 6, 2)
    assert not verify_segments(segment(resent)).ok                   # without drop_copies: seq goes backwards
    forged = lines[:4] + [lines[2].replace(b'"i":2', b'"i":9')] + lines[3:]
    report = verify_segments(segment(forged), drop_copies=True)
    assert not report.ok and report.copies == 0
