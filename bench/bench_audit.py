"""Benchmark: durable audit appends (write + fsync, group commit) for 1, 32 and 256 concurrent
appenders: records/s, CPU µs per record (every thread of the process), records per fsync, append
latency; writes bench/results/audit.json.

Run: .venv/bin/python -m bench.bench_audit [--seconds 2] [--concurrency 1 32 256] [--dir DIR]
     [--baseline DIR --rounds 3]   old vs new in one sitting: DIR holds an older `proxy/` package,
                                   e.g. `git archive <rev> proxy | tar -x -C DIR`; each case runs in
                                   its own process, the two alternating round by round
     [--steps]                     timeit figures for each step of sealing and for the thread handoff
The directory must be on the disk you care about: fsync on tmpfs costs nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "audit.json"
REPO = Path(__file__).resolve().parents[1]

# The shape of a real decision record (DESIGN §4).
RECORD: dict[str, Any] = {
    "event": "decision", "request_id": "0f3c6a0e-6d1f-4d7e-9a51-5bd3e7a1c2f4", "surface": "proxy",
    "decision": "allow", "rule": "etl-read-orders", "reasons": ["matched"],
    "identity": {"iss": "http://127.0.0.1:9000", "sub": "svc-etl-7", "client_id": "etl", "groups": ["data-eng"]},
    "client": {"addr": "127.0.0.1"},
    "target": {"method": "GET", "host": "orders.internal", "path": "/v1/orders/7"},
}
OUTCOME: dict[str, Any] = {
    "event": "outcome", "request_id": "0f3c6a0e-6d1f-4d7e-9a51-5bd3e7a1c2f4", "surface": "proxy",
    "rule": "etl-read-orders", "status": 200, "bytes_in": 0, "bytes_out": 1234, "duration_ms": 1.234,
}


class CountingFsync:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        os.fsync(fd)


async def run_case(directory: Path, concurrency: int, seconds: float, *, fsync: bool, delay: float) -> dict[str, Any]:
    from proxy.audit import AuditLog, segment_files, verify_files
    from proxy.config import AuditConfig
    from proxy.metrics import Metrics

    path = directory / "audit.jsonl"
    counter = CountingFsync()
    log = AuditLog(AuditConfig(path=path, rotate_bytes=1 << 40, fsync=fsync, group_commit_max_delay=delay),
                   Metrics(), fsync=counter)
    await log.open()
    fsyncs_at_start = counter.calls
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def appender(n: int) -> None:
        record = {**RECORD, "request_id": f"bench-{n}"}
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await log.append(record)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    cpu_started = time.process_time()
    await asyncio.gather(*(appender(n) for n in range(concurrency)))
    cpu = time.process_time() - cpu_started
    elapsed = time.perf_counter() - started
    fsyncs = counter.calls - fsyncs_at_start
    await log.close()

    verify_started = time.perf_counter()
    report = verify_files(segment_files(path))
    verify_seconds = time.perf_counter() - verify_started
    if not report.ok or report.records != len(latencies):
        raise SystemExit(f"benchmark log does not verify: {report.problems[:3]}")
    path.unlink()
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {
        "concurrency": concurrency,
        "fsync": fsync,
        "group_commit_max_delay": delay,
        "records": len(latencies),
        "seconds": round(elapsed, 3),
        "records_per_s": round(len(latencies) / elapsed, 1),
        "cpu_us_per_record": round(cpu / len(latencies) * 1e6, 2),
        "fsyncs": fsyncs,
        "records_per_fsync": round(len(latencies) / fsyncs, 2) if fsyncs else None,
        "p50_ms": round(cuts[49] * 1000, 3),
        "p99_ms": round(cuts[98] * 1000, 3),
        "verify_records_per_s": round(report.records / verify_seconds, 1),
    }


# --- old vs new in one sitting: each case in a child process that imports `proxy` from its tree -----

_CHILD = """
import asyncio, json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from bench.bench_audit import run_case
case = asyncio.run(run_case(Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), fsync=sys.argv[5] == "1",
                            delay=float(sys.argv[6])))
print(json.dumps(case))
"""


def run_case_in(tree: Path, directory: Path, concurrency: int, seconds: float, fsync: bool,
                delay: float) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(tree), str(directory), str(concurrency), str(seconds),
                          "1" if fsync else "0", str(delay)], cwd=REPO, check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout))


# --- the steps, one at a time ---------------------------------------------------------------------

def _per_call_us(fn: Callable[[], Any], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def _seal_by_json_dumps(fields: dict[str, Any], seq: int, prev: str, ts: str) -> tuple[bytes, str]:
    """The sealing the reused encoder replaced (the canonical form spelled out in chain.py)."""
    body = {**fields, "v": 1, "seq": seq, "ts": ts, "prev": prev}
    c = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")
    digest = hashlib.sha256(prev.encode("ascii") + c).hexdigest()
    return b"%s,\"hash\":\"%s\"}\n" % (c[:-1], digest.encode("ascii")), digest


def sealing_steps() -> dict[str, float]:
    from proxy.audit.chain import ChainState, SealedBatch, canonical, format_ts, unsealed

    prev, ts = "ab" * 32, format_ts(time.time())
    body = {**RECORD, "v": 1, "seq": 42, "ts": ts, "prev": prev}
    text = canonical(body)
    steps = {
        "json.dumps canonical (decision)": lambda: json.dumps(body, sort_keys=True, separators=(",", ":"),
                                                              ensure_ascii=True, allow_nan=False),
        "reused encoder canonical (decision)": lambda: canonical(body),
        "unsealed copy (at append)": lambda: unsealed(RECORD),
        "sha256(prev + canonical) hex": lambda: hashlib.sha256(prev.encode() + text).hexdigest(),
        "format_ts (once per batch)": lambda: format_ts(1796000000.5),
        "seal by json.dumps (decision)": lambda: _seal_by_json_dumps(RECORD, 42, prev, ts),
        "seal by json.dumps (outcome)": lambda: _seal_by_json_dumps(OUTCOME, 42, prev, ts),
    }
    figures = {name: round(_per_call_us(fn, 20000), 3) for name, fn in steps.items()}
    for name, fields in (("decision", RECORD), ("outcome", OUTCOME)):
        pieces = [unsealed(fields) for _ in range(1000)]

        def seal_batch(pieces: list[dict[str, Any]] = pieces) -> bytes:
            batch = SealedBatch(ChainState(41, prev), 1796000000.5)
            for piece in pieces:
                batch.add(piece)
            return batch.data()

        figures[f"SealedBatch.add + data, per record ({name})"] = round(_per_call_us(seal_batch, 20) / 1000, 3)
    return figures


async def _handoffs(rounds: int) -> dict[str, float]:
    from concurrent.futures import ThreadPoolExecutor

    from proxy.audit.file_thread import FileThread

    loop = asyncio.get_running_loop()

    def nothing() -> None:
        return None

    executor = ThreadPoolExecutor(max_workers=1)
    cpu = time.process_time()
    for _ in range(rounds):
        await loop.run_in_executor(executor, nothing)
    executor_us = (time.process_time() - cpu) / rounds * 1e6
    executor.shutdown()

    thread = FileThread(loop, "bench-handoff")
    cpu = time.process_time()
    for _ in range(rounds):
        await thread.run(nothing)
    awaited_us = (time.process_time() - cpu) / rounds * 1e6

    done = loop.create_future()
    left = rounds

    def answered(_result: None, _error: BaseException | None) -> None:
        nonlocal left
        left -= 1
        if left:
            thread.submit(nothing, answered)
        else:
            done.set_result(None)

    cpu = time.process_time()
    thread.submit(nothing, answered)
    await done
    callback_us = (time.process_time() - cpu) / rounds * 1e6
    thread.stop()
    return {"run_in_executor (future + chained future + task wake)": round(executor_us, 2),
            "FileThread.run (one future + task wake)": round(awaited_us, 2),
            "FileThread.submit (callback, as a batch does)": round(callback_us, 2)}


def print_steps() -> dict[str, float]:
    figures = {**sealing_steps(), **asyncio.run(_handoffs(5000))}
    print(f"{'step':<58}{'µs':>9}   (handoffs: CPU of both threads per round trip)")
    for name, us in figures.items():
        print(f"{name:<58}{us:>9.2f}")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each case")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--dir", type=Path, default=RESULTS.parent, help="where the audit files are written")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--baseline", type=Path, help="a tree holding the older proxy/ package to compare with")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of old/new cases with --baseline")
    parser.add_argument("--steps", action="store_true", help="also time each step of sealing and the handoff")
    args = parser.parse_args()

    # fsync on with and without a 2 ms wait for companions, and fsync off as the cost-of-durability baseline.
    modes = [(True, 0.0), (True, 0.002), (False, 0.0)]
    trees = {"new": REPO} if args.baseline is None else {"new": REPO, "old": args.baseline.resolve()}
    args.dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()       # fsync timings swing with whatever else uses the disk
    cases = []
    with tempfile.TemporaryDirectory(prefix="bench-audit-", dir=args.dir) as tmp:
        for round_ in range(args.rounds if args.baseline else 1):
            order = list(trees.items()) if round_ % 2 == 0 else list(reversed(trees.items()))
            for fsync, delay in modes:
                for concurrency in args.concurrency:
                    for impl, tree in order:
                        case = run_case_in(tree, Path(tmp), concurrency, args.seconds, fsync, delay)
                        cases.append({"impl": impl, "round": round_, **case})
    steps = print_steps() if args.steps else None

    results = {
        "benchmark": "audit",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "directory": str(args.dir.resolve()),
        "seconds_per_case": args.seconds,
        "baseline": str(args.baseline) if args.baseline else None,
        "cases": cases,
        "medians": _medians(cases),
        "steps_us": steps,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")

    print(f"{'impl':<6}{'fsync':<7}{'delay ms':>9}{'appenders':>11}{'records/s':>12}{'CPU µs/rec':>12}"
          f"{'rec/fsync':>11}{'p50 ms':>9}{'p99 ms':>9}")
    for c in results["medians"]:
        per_fsync = f"{c['records_per_fsync']:.1f}" if c["records_per_fsync"] is not None else "-"
        print(f"{c['impl']:<6}{'on' if c['fsync'] else 'off':<7}{c['group_commit_max_delay'] * 1000:>9.1f}"
              f"{c['concurrency']:>11}{c['records_per_s']:>12.0f}{c['cpu_us_per_record']:>12.1f}{per_fsync:>11}"
              f"{c['p50_ms']:>9.2f}{c['p99_ms']:>9.2f}")
    print(f"medians over {args.rounds if args.baseline else 1} round(s); load average "
          f"{load_before[0]:.2f} before; wrote {args.output}")
    return 0


def _medians(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per implementation and case: the median of each figure over the rounds."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for case in cases:
        groups.setdefault((case["fsync"], -case["group_commit_max_delay"], case["concurrency"], case["impl"]),
                          []).append(case)
    rows = []
    for key in sorted(groups, key=lambda k: (not k[0], k[1], k[2], k[3])):
        runs = groups[key]
        row = {name: runs[0][name] for name in ("impl", "fsync", "group_commit_max_delay", "concurrency")}
        for name in ("records_per_s", "cpu_us_per_record", "p50_ms", "p99_ms"):
            row[name] = statistics.median(run[name] for run in runs)
        per_fsync = [run["records_per_fsync"] for run in runs if run["records_per_fsync"] is not None]
        row["records_per_fsync"] = statistics.median(per_fsync) if per_fsync else None
        rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(main())
