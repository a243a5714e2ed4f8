"""Runs every benchmark in bench/ in one sitting, each as its own process, prints issue 9's targets (and
the others') with their verdicts and writes bench/results/summary.json.

Run: .venv/bin/python -m bench.run [--quick] [--check]    (or `make bench`, `make bench BENCH_ARGS=--quick`)
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._sitting import loadavg, machine

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
    Bench("gateway", "bench_gateway", ("--quick",)),
    Bench("tracing", "bench_tracing", ("--quick",), needs_wrk=True),
    Bench("stream_memory", "bench_stream_memory", ("--quick",)),
    Bench("head_flood", "bench_head_flood", ("--quick",)),
    Bench("jwt", "bench_jwt", ("--quick",)),
    Bench("policy", "bench_policy", ("--requests", "10000")),
    Bench("audit", "bench_audit", ("--seconds", "1")),
    Bench("shipping", "bench_shipping", ("--quick",), needs_wrk=True),
    Bench("suggest", "bench_suggest", ("--records", "100000")),
)

# Every target, listed (and printed) even when its benchmark did not run: (name, goal).  Issue 9's come
# first; the benchmarks' own `targets` (bench_proxy.py, bench_envoy.py, ...) fill them in and add the
# figures they report beside them.
TARGETS = {
    "reverse proxy": "≥ 0.50 × bare aiohttp req/s (asyncio)",
    "forward auth": "≥ 0.70 × bare aiohttp req/s (asyncio)",
    "envoy + idgate HTTP ext_authz": "≥ 0.8 × envoy jwt_authn + rbac req/s (asyncio)",
    "envoy + idgate gRPC ext_authz": "≥ 0.6 × envoy jwt_authn + rbac req/s (asyncio)",
    "added latency, 1 connection": "p50 < +150 µs over the upstream alone",
    "warm token check": "p99 < 20 µs",
    "policy decision (10,000 rules)": "p99 < 50 µs",
    "streaming memory": "peak RSS flat with body size",
    "DynamoDB gateway's own cost per call": "p50 < 300 µs on one core (in-process, no upstream)",   # issue 10
    "audit shipping on, reverse proxy": "≥ 0.95 × the req/s with shipping off",                    # issue 11
    "audit shipping on, forward auth": "≥ 0.95 × the req/s with shipping off",
    "audit shipping, sinks down": "≥ 0.95 × the req/s with shipping off",
    "tracing on at 1 % vs off": "≥ 0.95 × tracing off req/s",                                       # issue 13
    "idgate suggest, 1M records": "streaming: peak RSS < 200 MB",                                   # issue 16
}
ISSUE_9 = tuple(TARGETS)[:5]


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


def _verdict(verdict: dict[str, Any]) -> str:
    if verdict["met"] is not None:
        return "pass" if verdict["met"] else "MISS"
    return "not measured" if verdict["measured"] is None else "-"


def judge(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each target with the measured value and whether it is met (met None: not measured, or a figure
    reported beside the targets), each with the verdict run.py prints."""
    verdicts: dict[str, dict[str, Any]] = {name: {"target": target, "measured": None, "met": None}
                                           for name, target in TARGETS.items()}
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
            # A benchmark's own verdicts, when it states them as {target, measured, met}.
            if isinstance(verdict, dict) and {"target", "measured", "met"} <= verdict.keys():
                verdicts[what] = {**verdict, "target": str(verdict["target"]), "measured": str(verdict["measured"]),
                                  "from": name}
    # Issue 9's targets, then the figures reported beside them, then the other targets.
    def group(name: str) -> int:
        return 0 if name in ISSUE_9 else 1 if verdicts[name]["target"] == "(reported)" else 2
    return {name: {**verdicts[name], "verdict": _verdict(verdicts[name])} for name in sorted(verdicts, key=group)}


def _load_rows(result: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    rows = result.get("rows")
    if isinstance(rows, dict) and rows and all(isinstance(r, dict) and "requests_per_s" in r for r in rows.values()):
        return rows
    return None


def _print_load(name: str, result: dict[str, Any], rows: dict[str, dict[str, Any]]) -> None:
    """A load benchmark's rows (wrk's or another load generator's): medians over its rounds, with the CPU
    µs per request of each row's server under test and the cores each watched process used."""
    wrk = result.get("wrk")
    pinning = result.get("pinning", {})
    load = (f"wrk -t{wrk.get('threads')} -c{wrk.get('connections')} -d{wrk.get('duration_s')}s, medians of "
            f"{wrk.get('rounds', 1)} interleaved round(s)" if wrk else result.get("load_generator", "?"))
    print(f"\n{name}: {load}; server under test on core(s) {pinning.get('server_under_test', '?')}, the rest on "
          f"{pinning.get('load_generator_upstream_issuer', '?')}")
    print(f"{'':<40}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU µs/req':>12}   cores used")
    for row_name, row in rows.items():
        server = row.get("server_under_test")
        cpu = row.get("cpu_us_per_request", {}).get(server) if server else None
        cores = ", ".join(f"{k} {v:.2f}" for k, v in row.get("cpu_share", {}).items())
        flag = f"  !! {row['non_2xx']} non-2xx" if row.get("non_2xx") else ""
        print(f"{row_name:<40}{row['requests_per_s']:>9.0f}{_ms(row.get('p50_ms')):>9}{_ms(row.get('p99_ms')):>9}"
              f"{(f'{cpu:.0f}' if cpu is not None else '-'):>12}   {cores}{flag}")
    for surface, profile in result.get("profiles", {}).items():
        if "top_own_time" in profile:
            print(f"  profile, {surface}: " + "; ".join(f"{e['share']:.0%} {e['frame']}"
                                                       for e in profile["top_own_time"]))
        elif "skipped" in profile:
            print(f"  profile, {surface}: skipped ({profile['skipped']})")


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
        if key in ("machine", "loadavg", "pinning", "targets"):
            continue    # in the header and the targets table
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
    print("\n" + "=" * 100)
    print(f"idgate benchmarks  {info['timestamp']}")
    print(f"machine: {info['nproc']} CPU(s) ({info['cpu_model']}), load average {info['loadavg']} at start, "
          f"{info['loadavg_at_end']} at end, Python {info['python']}, aiohttp {info['aiohttp']}, "
          f"uvloop {info['uvloop'] or 'missing'}, {info['wrk'] or 'wrk missing'}")
    for name, result in results.items():
        rows = _load_rows(result)
        if rows is not None:
            _print_load(name, result, rows)
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
    gateway = results.get("gateway")
    for key, audit in (("cost", "fsync on"), ("cost_fsync_off", "fsync off")):
        cost = gateway.get(key) if gateway else None
        if cost:
            whole = cost["whole"]
            print(f"  gateway call, in-process, audit {audit:<9}  p50 {whole['process_cpu_p50_us']:>8.1f} µs CPU, "
                  f"{whole['wall_p50_us']:.1f} µs wall; steps (CPU p50 µs): "
                  + ", ".join(f"{step} {figures['cpu_p50_us']:.0f}" for step, figures in cost["steps"].items()))
    stream = results.get("stream_memory")
    if stream:
        for row in stream["transfers"]:
            print(f"  stream {row['direction']:<8} {row['bytes'] >> 20:>5} MiB  idgate peak RSS "
                  f"{row['peak_rss_mib']:>6.1f} MiB  {row['mib_per_s']:>7.1f} MiB/s")
    for name, result in results.items():
        if name not in ("jwt", "policy", "stream_memory") and _load_rows(result) is None:
            _print_other(name, result)
    missing = {name: status for name, status in statuses.items() if status != "ok"}
    if missing:
        print("\nnot measured: " + "; ".join(f"{name} ({status})" for name, status in missing.items()))
    widths = [max(len(heading), *(len(cell) for cell in cells)) + 2 for heading, cells in (
        ("target", list(verdicts)), ("goal", [v["target"] for v in verdicts.values()]),
        ("measured", [v["measured"] or "-" for v in verdicts.values()]))]
    print("\n" + "".join(f"{heading:<{width}}" for heading, width in zip(("target", "goal", "measured"), widths))
          + "verdict")
    for name, verdict in verdicts.items():
        cells = (name, verdict["target"], verdict["measured"] or "-")
        print("".join(f"{cell:<{width}}" for cell, width in zip(cells, widths)) + verdict["verdict"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one short round of everything (a smoke check)")
    parser.add_argument("--check", action="store_true", help="exit 3 when a measured target is missed")
    args = parser.parse_args()
    info = machine()
    print(f"idgate benchmarks {info['timestamp']}: {info['nproc']} CPU(s), Python {info['python']}", flush=True)
    if info["loadavg"][0] > BUSY_LOAD:
        print(f"warning: load average {info['loadavg'][0]} before starting: other work shares the CPUs, "
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
    info["loadavg_at_end"] = loadavg()
    print_report(info, results, statuses, verdicts)
    # Where a regression shows first: CPU per request and the profiles, gathered from every load benchmark.
    cpu = {f"{name}: {row}": us for name, result in results.items()
           for row, us in result.get("cpu_us_per_request", {}).items()}
    profiles = {f"{name}: {surface}": profile for name, result in results.items()
                for surface, profile in result.get("profiles", {}).items()}
    SUMMARY.write_text(json.dumps({"machine": info, "quick": args.quick, "statuses": statuses, "targets": verdicts,
                                   "cpu_us_per_request": cpu, "profiles": profiles, "results": results},
                                  indent=2, ensure_ascii=False) + "\n")
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
