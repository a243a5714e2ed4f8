"""Benchmark: `verify_files` on one large generated segment: records/s and the verifying process's
peak RSS (VmHWM) above its RSS just before verifying; writes bench/results/audit_verify.json.

Run: .venv/bin/python -m bench.bench_audit_verify [--mib 100] [--rounds 3] [--dir DIR]
     [--baseline DIR]   old vs new in one sitting: DIR holds an older `proxy/` package, e.g.
                        `git archive <rev> proxy | tar -x -C DIR`; the two alternate round by round
Each verification runs in its own process, so one's peak memory does not hide the next one's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.bench_audit import OUTCOME, RECORD
from tests.harness.segments import write_segment

RESULTS = Path(__file__).resolve().parent / "results" / "audit_verify.json"
REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024

# Run in the child: the figures it prints are its own, before and after verifying.
_CHILD = """
import json, sys, time
from pathlib import Path
from proxy.audit import verify_files

def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0

try:
    open("/proc/self/clear_refs", "w").write("5")      # VmHWM back to VmRSS: import peaks do not count
except OSError:
    pass
baseline = status_kib("VmRSS")
started = time.perf_counter()
report = verify_files([Path(sys.argv[1])])
seconds = time.perf_counter() - started
print(json.dumps({"ok": report.ok, "records": report.records, "seconds": seconds,
                  "baseline_kib": baseline, "peak_kib": status_kib("VmHWM")}))
"""


def run_case(tree: Path, segment: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    result = subprocess.run([sys.executable, "-c", _CHILD, str(segment)], env=env, cwd=tree,
                            capture_output=True, text=True, check=True)
    figures: dict[str, Any] = json.loads(result.stdout)
    figures["records_per_s"] = figures["records"] / figures["seconds"]
    figures["peak_above_baseline_mib"] = (figures["peak_kib"] - figures["baseline_kib"]) / 1024
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=100, help="size of the generated segment")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the segment is written (default: a tmp dir)")
    parser.add_argument("--baseline", type=Path, help="a tree holding the older proxy/ package to compare with")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    trees = {"new": REPO} if args.baseline is None else {"new": REPO, "old": args.baseline.resolve()}
    cases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-verify-", dir=args.dir) as tmp:
        segment = Path(tmp) / "audit.jsonl"
        count = write_segment(segment, args.mib * MIB, lambda n: {
            **(RECORD if n % 2 == 0 else OUTCOME), "request_id": f"bench-{n}"}, per_batch=1000)
        size = segment.stat().st_size
        for round_ in range(args.rounds):
            order = list(trees.items()) if round_ % 2 == 0 else list(reversed(trees.items()))
            for impl, tree in order:
                case = run_case(tree, segment)
                if not case["ok"] or case["records"] != count:
                    raise SystemExit(f"{impl}: the generated segment did not verify: {case}")
                cases.append({"impl": impl, "round": round_, **case})
    medians = {impl: {"records_per_s": statistics.median(c["records_per_s"] for c in cases if c["impl"] == impl),
                      "peak_above_baseline_mib": statistics.median(c["peak_above_baseline_mib"]
                                                                   for c in cases if c["impl"] == impl)}
               for impl in trees}
    results = {"benchmark": "audit_verify", "python": sys.version.split()[0], "segment_bytes": size,
               "records": count, "baseline": str(args.baseline) if args.baseline else None,
               "cases": cases, "medians": medians}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"segment: {size / MIB:.1f} MiB, {count} records; medians over {args.rounds} round(s)")
    for impl, m in medians.items():
        print(f"{impl:<5}{m['records_per_s']:>12.0f} records/s{m['peak_above_baseline_mib']:>10.1f} MiB peak above baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
