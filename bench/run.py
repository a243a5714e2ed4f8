"""Runs every benchmark in bench/ in one sitting, each as its own process, prints one table against
the targets and writes bench/results/summary.json.

Run: .venv/bin/python -m bench.run [--quick] [--check]    (or `make bench`)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
SUMMARY = RESULTS / "summary.json"
SCRIPT_TIMEOUT = 900  # seconds; a benchmark that takes longer is stuck
BUSY_LOAD = 0.5       # 1-minute load average above which the machine is not quiet enough to compare runs


@dataclass(frozen=True)
class Bench:
    name: str                    # also the stem of the JSON it writes in bench/results/
    module: str                  # bench/<module>.py, run as `python -m bench.<module>`
    quick_args: tuple[str, ...]  # used with --quick, if the script's --help names the first of them
    needs_wrk: bool = False


BENCHES = (
    Bench("proxy", "bench_proxy", ("--quick",), needs_wrk=True),
    Bench("envoy", "bench_envoy", ("--quick",), needs_wrk=True),
    Bench("broker", "bench_broker", ("--quick",), needs_wrk=True),
    Bench("stream_memory", "bench_stream_memory", ("--quick",)),
    Bench("head_flood", "bench_head_flood", ("--quick",)),
    Bench("jwt", "bench_jwt", ("--quick",)),
    Bench("policy", "bench_policy", ("--requests", "10000")),
    Bench("audit", "bench_audit", ("--seconds", "1")),
)

# (what, how it is judged) — the targets for one worker process.
TARGETS = {
    "reverse proxy": "≥ 0.50 × bare req/s",
    "forward auth": "≥ 0.70 × bare req/s",
    "warm token check": "p99 < 20 µs",
    "policy decision (10,000 rules)": "p99 < 50 µs",
    "streaming memory": "peak RSS flat with body size",
}


def machine() -> dict[str, Any]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import aiohttp
        aiohttp_version = aiohttp.__version__
    except ImportError:
        aiohttp_version = "?"
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "aiohttp": aiohttp_version,
        "kernel": platform.release(),
        "wrk": _wrk_version(),
    }


def _wrk_version() -> str | None:
    try:
        done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0] if first else "unknown"


def _command(bench: Bench, *args: str) -> list[str]:
    return [sys.executable, "-m", f"bench.{bench.module}", *args]


def _accepts(bench: Bench, flag: str) -> bool:
    """Another helper's script may not take our quick-run flag: ask its --help rather than guess."""
    try:
        done = subprocess.run(_command(bench, "--help"), capture_output=True, text=True, timeout=60,
                              cwd=BENCH.parent)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0 and flag in done.stdout


def run_bench(bench: Bench, quick: bool) -> tuple[str, dict[str, Any] | None]:
    """Run one script with its output shown live; its fresh JSON result, or why there is none."""
    if not (BENCH / f"{bench.module}.py").exists():
        return "not present", None
    args = list(bench.quick_args) if quick else []
    if args and not _accepts(bench, args[0]):
        args = []
    result_path = RESULTS / f"{bench.name}.json"
    started = time.time()
    print(f"\n== bench.{bench.module} {' '.join(args)}".rstrip(), flush=True)
    child = subprocess.Popen(_command(bench, *args), cwd=BENCH.parent)
    try:
        status = child.wait(timeout=SCRIPT_TIMEOUT)
    except KeyboardInterrupt:
        # The child got the same Ctrl-C and is stopping its servers: give it the time to do so.
        _stop(child, signal.SIGINT)
        raise
    except subprocess.TimeoutExpired:
        _stop(child, signal.SIGTERM)
        return f"timed out after {SCRIPT_TIMEOUT}s", None
    if status != 0:
        return f"failed (exit {status})", None
    if not result_path.exists() or result_path.stat().st_mtime < started:
        return f"wrote no fresh {result_path.name}", None
    return "ok", json.loads(result_path.read_text())


def _stop(child: subprocess.Popen[bytes], sig: int) -> None:
    if child.poll() is None:
        child.send_signal(sig)
    try:
        child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _ms(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "-"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED")


def judge(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each target with the measured value and whether it is met (None: not measured)."""
    verdicts: dict[str, dict[str, Any]] = {name: {"target": target, "measured": None, "met": None}
                                           for name, target in TARGETS.items()}
    rows = results.get("proxy", {}).get("rows", {})
    for name, floor in (("reverse proxy", 0.5), ("forward auth", 0.7)):
        row = rows.get(name)
        if row and row.get("ratio_vs_bare") is not None:
            valid = not row.get("non_2xx")
            verdicts[name].update(measured=f"{row['ratio_vs_bare']:.2f} × bare",
                                  met=valid and row["ratio_vs_bare"] >= floor)
    warm = results.get("jwt", {}).get("warm")
    if warm:
        verdicts["warm token check"].update(measured=f"p99 {warm['p99_us']:.2f} µs", met=warm["p99_us"] < 20.0)
    decide = results.get("policy", {}).get("decide_http")
    if decide and "p99_us" in decide:
        rules = results["policy"].get("rules")
        verdicts["policy decision (10,000 rules)"].update(
            measured=f"p99 {decide['p99_us']:.2f} µs over {rules} rules",
            met=decide["p99_us"] < 50.0 and (rules or 0) >= 10_000)
    stream = results.get("stream_memory")
    if stream:
        verdicts["streaming memory"].update(
            measured=(f"peak {stream['peak_small_mib']} MiB @ {stream['small_bytes'] >> 20} MiB, "
                      f"{stream['peak_large_mib']} MiB @ {stream['large_bytes'] >> 20} MiB"),
            met=bool(stream["flat"]))
    for name, result in results.items():
        for what, verdict in result.get("targets", {}).items():
            # Another benchmark's own verdicts, when it states them as {target, measured, met}.
            if isinstance(verdict, dict) and {"target", "measured", "met"} <= verdict.keys():
                verdicts[what] = {"target": str(verdict["target"]), "measured": str(verdict["measured"]),
                                  "met": verdict["met"], "from": name}
    return verdicts


def _is_load(result: dict[str, Any]) -> bool:
    rows = result.get("rows")
    return isinstance(rows, dict) and all(isinstance(r, dict) and "requests_per_s" in r for r in rows.values())


def _print_load(name: str, result: dict[str, Any]) -> None:
    """Another load benchmark's wrk rows (e.g. bench_envoy.py), with whatever ratios it computed."""
    print(f"\n{name}:")
    print(f"{'name':<26}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}   ratios")
    for row_name, row in result["rows"].items():
        ratios = ", ".join(f"{key[len('ratio_'):]} {value:.2f}" for key, value in row.items()
                           if key.startswith("ratio_") and isinstance(value, (int, float)))
        flag = f"  !! {row['non_2xx']} non-2xx" if row.get("non_2xx") else ""
        print(f"{row_name:<26}{row['requests_per_s']:>10.0f}{_ms(row.get('p50_ms')):>9}{_ms(row.get('p99_ms')):>9}"
              f"   {ratios}{flag}")


def _print_other(name: str, result: dict[str, Any]) -> None:
    """A result in another helper's format: cases one per line, wrk rows as rows, other sections as
    their scalar fields."""
    cases = result.get("cases")
    if isinstance(cases, list) and all(isinstance(case, dict) for case in cases):
        for case in cases:
            fields = [f"{key} {value}" for key, value in case.items() if isinstance(value, (int, float, str))]
            print(f"  {name}: " + ", ".join(fields))
        return
    scalars = []
    for key, value in result.items():
        if isinstance(value, dict) and value and all(isinstance(r, dict) and "requests_per_s" in r
                                                     for r in value.values()):
            for row_name, row in value.items():
                print(f"  {name} {key}: {row_name:<22}{row['requests_per_s']:>9.0f} req/s  "
                      f"p50 {_ms(row.get('p50_ms'))} ms  p99 {_ms(row.get('p99_ms'))} ms")
        elif isinstance(value, dict):
            fields = [f"{k} {v}" for k, v in value.items() if isinstance(v, (int, float, str, bool))]
            if fields:
                print(f"  {name} {key}: " + ", ".join(fields))
        elif isinstance(value, (int, float, bool)):
            scalars.append(f"{key} {value}")
    if scalars:
        print(f"  {name}: " + ", ".join(scalars))


def print_report(info: dict[str, Any], results: dict[str, dict[str, Any]], statuses: dict[str, str],
                 verdicts: dict[str, dict[str, Any]]) -> None:
    print("\n" + "=" * 88)
    print(f"idgate benchmarks  {info['timestamp']}")
    print(f"machine: {info['nproc']} CPU(s) ({info['cpu_model']}), load at start {info['loadavg_at_start']}, "
          f"Python {info['python']}, aiohttp {info['aiohttp']}, {info['wrk'] or 'wrk missing'}")
    proxy = results.get("proxy")
    if proxy:
        wrk = proxy["wrk"]
        print(f"\nHTTP load: wrk -t{wrk['threads']} -c{wrk['connections']} -d{wrk['duration_s']}s --latency, "
              f"one idgate worker, {proxy['policy_rules']}-rule policy, audit fsync on, cached token")
        print(f"{'name':<24}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'vs bare':>9}   server CPU (cores)")
        for name, row in proxy["rows"].items():
            ratio = row.get("ratio_vs_bare")
            flag = f"  !! {row['non_2xx']} non-2xx" if row.get("non_2xx") else ""
            cpu = ", ".join(f"{k} {v:.2f}" for k, v in row.get("cpu_share", {}).items())
            print(f"{name:<24}{row['requests_per_s']:>10.0f}{_ms(row['p50_ms']):>9}{_ms(row['p99_ms']):>9}"
                  f"{(f'{ratio:.2f}' if ratio is not None else '-'):>9}   {cpu}{flag}")
        print(f"medians of {wrk.get('rounds', 1)} interleaved round(s); ratio = median of per-round ratios; "
              f"bare {proxy['bare_requests_per_s']:.0f} req/s, spread over rounds {proxy['bare_spread']:.0%}")
        audit = proxy.get("audit", {})
        if audit:
            print(f"audit during the load: {audit['records_on_disk']} records on disk, {audit['fsync_batches']} fsyncs "
                  f"(mean {audit['mean_records_per_fsync']} records/fsync), token cache "
                  f"{audit['token_cache_hits']:.0f} hits / {audit['token_cache_misses']:.0f} misses")
    for name, result in results.items():
        if name != "proxy" and _is_load(result):
            _print_load(name, result)
    print("\nmicro-benchmarks")
    jwt = results.get("jwt")
    if jwt:
        for name in ("cold", "warm"):
            row = jwt[name]
            print(f"  token verify {name:<5} (ES256)  median {row['median_us']:>8.2f} µs  p99 {row['p99_us']:>8.2f} µs")
    policy = results.get("policy")
    if policy and "decide_http" in policy:
        row = policy["decide_http"]
        print(f"  policy decision, {policy.get('rules')} rules  p50 {row.get('p50_us', 0):>8.2f} µs  "
              f"p99 {row.get('p99_us', 0):>8.2f} µs")
    stream = results.get("stream_memory")
    if stream:
        for row in stream["transfers"]:
            print(f"  stream {row['direction']:<8} {row['bytes'] >> 20:>5} MiB  idgate peak RSS "
                  f"{row['peak_rss_mib']:>6.1f} MiB  {row['mib_per_s']:>7.1f} MiB/s")
    for name, result in results.items():
        if name not in ("proxy", "jwt", "policy", "stream_memory") and not _is_load(result):
            _print_other(name, result)
    missing = {name: status for name, status in statuses.items() if status != "ok"}
    if missing:
        print("\nnot measured: " + "; ".join(f"{name} ({status})" for name, status in missing.items()))
    print(f"\n{'target':<32}{'goal':<30}{'measured':<48}verdict")
    for name, verdict in verdicts.items():
        print(f"{name:<32}{verdict['target']:<30}{verdict['measured'] or '-':<48}{_verdict(verdict['met'])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs and smaller bodies (about a minute)")
    parser.add_argument("--check", action="store_true", help="exit 3 when a measured target is missed")
    args = parser.parse_args()
    info = machine()
    print(f"idgate benchmarks {info['timestamp']}: {info['nproc']} CPU(s), Python {info['python']}", flush=True)
    if info["loadavg_at_start"][0] > BUSY_LOAD:
        print(f"warning: load average {info['loadavg_at_start'][0]} before starting: other work shares the CPUs, "
              "so req/s and ratios will be noisy", file=sys.stderr)
    have_wrk = info["wrk"] is not None
    if not have_wrk:
        print("wrk is not installed, so the HTTP load benchmarks are skipped: install it with `apt-get install wrk`",
              file=sys.stderr)
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    statuses: dict[str, str] = {}
    started = time.monotonic()
    for bench in BENCHES:
        if bench.needs_wrk and not have_wrk:
            statuses[bench.name] = "skipped: wrk missing (apt-get install wrk)"
            continue
        status, result = run_bench(bench, args.quick)
        statuses[bench.name] = status
        if result is not None:
            results[bench.name] = result
    verdicts = judge(results)
    info["duration_s"] = round(time.monotonic() - started, 1)
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print_report(info, results, statuses, verdicts)
    SUMMARY.write_text(json.dumps({"machine": info, "quick": args.quick, "statuses": statuses,
                                   "targets": verdicts, "results": results}, indent=2) + "\n")
    print(f"\nwrote {SUMMARY} ({info['duration_s']:.0f} s)")
    failed = [name for name, status in statuses.items() if status not in ("ok", "not present")]
    if failed or not have_wrk:
        return 1
    if args.check and any(v["met"] is False for v in verdicts.values()):
        return 3
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("run.py: interrupted; every benchmark stopped its servers", file=sys.stderr)
        sys.exit(130)
