"""Benchmark: durable audit appends (write + fsync, group commit) for 1, 16 and 256 concurrent
appenders.  Prints records/s, records per fsync and append latency; writes bench/results/audit.json.

Run: .venv/bin/python -m bench.bench_audit [--seconds 2] [--concurrency 1 16 256] [--dir DIR]
The directory must be on the disk you care about: fsync on tmpfs costs nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from proxy.audit import AuditLog, segment_files, verify_files
from proxy.config import AuditConfig
from proxy.metrics import Metrics

RESULTS = Path(__file__).resolve().parent / "results" / "audit.json"

# The shape of a real decision record (DESIGN §4).
RECORD: dict[str, Any] = {
    "event": "decision", "request_id": "0f3c6a0e-6d1f-4d7e-9a51-5bd3e7a1c2f4", "surface": "proxy",
    "decision": "allow", "rule": "etl-read-orders", "reasons": ["matched"],
    "identity": {"iss": "http://127.0.0.1:9000", "sub": "svc-etl-7", "client_id": "etl", "groups": ["data-eng"]},
    "client": {"addr": "127.0.0.1"},
    "target": {"method": "GET", "host": "orders.internal", "path": "/v1/orders/7"},
}


class CountingFsync:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        os.fsync(fd)


async def run_case(directory: Path, concurrency: int, seconds: float, *, fsync: bool, delay: float) -> dict[str, Any]:
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
    await asyncio.gather(*(appender(n) for n in range(concurrency)))
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
        "fsyncs": fsyncs,
        "records_per_fsync": round(len(latencies) / fsyncs, 2) if fsyncs else None,
        "p50_ms": round(cuts[49] * 1000, 3),
        "p99_ms": round(cuts[98] * 1000, 3),
        "verify_records_per_s": round(report.records / verify_seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each case")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 256])
    parser.add_argument("--dir", type=Path, default=RESULTS.parent, help="where the audit files are written")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    # fsync on with and without waiting for companions, and fsync off as the cost-of-durability baseline.
    modes = [(True, 0.0), (True, AuditConfig().group_commit_max_delay), (False, 0.0)]
    args.dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()       # fsync timings swing with whatever else uses the disk
    cases = []
    with tempfile.TemporaryDirectory(prefix="bench-audit-", dir=args.dir) as tmp:
        for fsync, delay in modes:
            for concurrency in args.concurrency:
                cases.append(asyncio.run(run_case(Path(tmp), concurrency, args.seconds, fsync=fsync, delay=delay)))

    results = {
        "benchmark": "audit",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "directory": str(args.dir.resolve()),
        "seconds_per_case": args.seconds,
        "cases": cases,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")

    print(f"{'fsync':<7}{'delay ms':>9}{'appenders':>11}{'records/s':>12}{'rec/fsync':>11}"
          f"{'p50 ms':>9}{'p99 ms':>9}")
    for c in cases:
        per_fsync = f"{c['records_per_fsync']:.1f}" if c["records_per_fsync"] is not None else "-"
        print(f"{'on' if c['fsync'] else 'off':<7}{c['group_commit_max_delay'] * 1000:>9.1f}{c['concurrency']:>11}"
              f"{c['records_per_s']:>12.0f}{per_fsync:>11}{c['p50_ms']:>9.2f}{c['p99_ms']:>9.2f}")
    print(f"verify: {cases[-1]['verify_records_per_s']:.0f} records/s; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
