"""The soak's figures (bench/_soak_figures.py): its schedule of wrk runs and kills, wrk's output, the RSS
slope across a worker's lives, and the reconciliation of upstream request ids with the audit."""

from __future__ import annotations

import json
from pathlib import Path

from bench._soak_figures import errors_by_kind, parse_chunk, reconcile, rss_slopes, schedule

WRK_OUTPUT = """\
Running 5s test @ http://127.0.0.1:1/v1/orders/7
  1 threads and 16 connections
  Latency Distribution
     50%    9.12ms
     99%   31.79ms
  4033 requests in 5.00s, 1.02MB read
  Socket errors: connect 0, read 7, write 0, timeout 2
  Non-2xx or 3xx responses: 3
Requests/sec:    804.12
Transfer/sec:    208.11KB
STATUSES {"200": 4030, "503": 3}
"""


def test_the_schedule_covers_the_run_and_puts_each_kill_in_a_window_of_its_own() -> None:
    plan = schedule(60, kills=2, workers=2, chunk_s=5, window_s=8, lead_s=1)
    assert plan[0].start_s == 0 and plan[-1].end_s == 60
    assert all(a.end_s == b.start_s for a, b in zip(plan, plan[1:]))
    kills = [chunk for chunk in plan if chunk.kill_worker is not None]
    assert [(c.start_s + c.lead_s, c.kill_worker, c.seconds) for c in kills] == [(20, 0, 8), (40, 1, 8)]
    assert all(chunk.seconds <= 5 for chunk in plan if chunk.kill_worker is None)


def test_wrk_output_gives_statuses_and_socket_errors_by_kind() -> None:
    chunk = parse_chunk(WRK_OUTPUT)
    assert (chunk["requests"], chunk["requests_per_s"], chunk["latency_p99"]) == (4033, 804.12, "31.79ms")
    assert chunk["statuses"] == {200: 4030, 503: 3}
    assert chunk["socket_errors"] == {"connect": 0, "read": 7, "write": 0, "timeout": 2}
    assert errors_by_kind([chunk, chunk]) == {"socket read": 14, "socket timeout": 4, "status 503": 6}


def _samples(lives: list[tuple[int, float, float, float]]) -> list[dict]:
    """(pid, from, to, KiB per second) lives of "worker 0", sampled every second from 50,000 KiB."""
    samples = []
    for pid, start, end, rate in lives:
        t = start
        while t <= end:
            samples.append({"t": t, "processes": {"worker 0": {"pid": pid, "rss_kib": 50_000 + (t - start) * rate,
                                                               "fds": 10}}})
            t += 1.0
    return samples


def test_the_rss_slope_fits_every_life_past_its_warm_up_and_a_restart_drop_is_no_slope() -> None:
    # Flat lives with a restart between them: a line through all the points would slope; the fit does not.
    flat = rss_slopes(_samples([(1, 0, 30, 0.0), (2, 31, 60, 0.0)]), warmup_s=5)["worker 0"]
    assert flat["slope_kib_per_min"] == 0.0 and [life["points_fitted"] for life in flat["lives"]] == [26, 25]
    growing = rss_slopes(_samples([(1, 0, 30, 2.0), (2, 31, 60, 2.0)]), warmup_s=5)["worker 0"]
    assert growing["slope_kib_per_min"] == 120.0


def test_reconciliation_finds_an_upstream_request_without_its_allow_record(tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("a1\na2\na3\na3\n")
    segment = tmp_path / "audit.w0.jsonl"
    records = [{"event": "decision", "decision": "allow", "request_id": "a1"},
               {"event": "outcome", "request_id": "a1"},
               {"event": "decision", "decision": "allow", "request_id": "a3"},
               {"event": "decision", "decision": "allow", "request_id": "k1"},    # killed before forwarding
               {"event": "decision", "decision": "deny", "request_id": "a2"}]    # a deny is not an allow
    segment.write_text("".join(json.dumps(r) + "\n" for r in records))
    got = reconcile(ids, [segment])
    assert (got["unreconciled"], got["unreconciled_sample"]) == (1, ["a2"])
    assert (got["upstream_duplicate_ids"], got["allow_records_without_upstream_hit"], got["deny_records"]) == (1, 1, 1)
    assert got["records_by_event"] == {"decision": 4, "outcome": 1}

