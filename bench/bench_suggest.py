"""Benchmark: `idgate suggest` over a generated audit segment of --records records (decisions and their
outcomes of 50 identities over varied paths, hash-chained as idgate writes them): records/s and the
suggesting process's peak RSS; writes bench/results/suggest.json.

Run: .venv/bin/python -m bench.bench_suggest [--records 1000000] [--rounds 3] [--dir DIR]
Each round runs `python -m proxy suggest` as its own process (peak RSS from the kernel's accounting).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._sitting import loadavg, machine
from tests.harness.segments import write_segment

RESULTS = Path(__file__).resolve().parent / "results" / "suggest.json"
REPO = Path(__file__).resolve().parents[1]
IDENTITIES = 50
# Bytes per record of the mix below, measured: write_segment is asked for bytes, not records.
BYTES_PER_RECORD = 440


def record(n: int) -> dict[str, Any]:
    """Even n: an allowed decision; odd n: its outcome.  Paths vary by order id, report and depth."""
    who = n // 2 % IDENTITIES
    request_id = f"bench-{n // 2:012d}"
    if n % 2:
        return {"event": "outcome", "request_id": request_id, "surface": "proxy", "rule": f"rule-{who % 5}",
                "status": 200, "bytes_in": 0, "bytes_out": 512, "duration_ms": 1.5}
    kind = n // 2 % 3
    path = (f"/v1/orders/{n % 10007}" if kind == 0 else f"/v1/reports/{n % 97}/items/{n % 13}" if kind == 1
            else f"/v1/customers/{n % 5003}/orders")
    return {"event": "decision", "request_id": request_id, "surface": "proxy", "decision": "allow",
            "rule": f"rule-{who % 5}", "reasons": ["matched"],
            "identity": {"iss": "https://login.example.com", "sub": f"svc-{who}", "client_id": None,
                         "groups": ["data-eng"]},
            "client": {"addr": "10.0.0.7"},
            "target": {"method": "GET" if n % 7 else "POST", "host": "orders.internal", "path": path}}


def run_round(segment: Path) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "proxy", "suggest", "--audit", str(segment)], cwd=REPO,
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if done.returncode != 0:
        raise SystemExit(f"idgate suggest failed ({done.returncode}): {done.stderr[-2000:]}")
    # ru_maxrss of children is the largest child so far: a round's own peak only shows when it grows.
    return {"seconds": seconds, "peak_rss_mib": peak_kib / 1024, "grew": peak_kib > before,
            "rules": done.stdout.count("  - id: ")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="where to write the segment (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        segment = Path(tmp) / "idgate-audit.jsonl"
        written = write_segment(segment, args.records * BYTES_PER_RECORD, record)
        size = os.path.getsize(segment)
        rounds = [run_round(segment) for _ in range(args.rounds)]
    seconds = statistics.median(r["seconds"] for r in rounds)
    figures = {"machine": machine(), "loadavg": loadavg(), "records": written, "segment_mib": size / 2**20,
               "rounds": rounds, "median_seconds": seconds, "records_per_s": written / seconds,
               "peak_rss_mib": max(r["peak_rss_mib"] for r in rounds)}
    figures["targets"] = {"idgate suggest, 1M records": {
        "target": "streaming: peak RSS < 200 MB", "met": figures["peak_rss_mib"] * 2**20 < 200e6,
        "measured": f"{figures['peak_rss_mib']:.0f} MiB over {written:,} records, {written / seconds:,.0f} records/s"}}
    print(f"{'records':>10} {'segment MiB':>12} {'median s':>9} {'records/s':>10} {'peak RSS MiB':>13} {'rules':>6}")
    print(f"{written:>10} {size / 2**20:>12.1f} {seconds:>9.2f} {written / seconds:>10.0f} "
          f"{figures['peak_rss_mib']:>13.1f} {rounds[0]['rules']:>6}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
