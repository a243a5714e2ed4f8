"""Load benchmark with wrk: a bare aiohttp handler, idgate's reverse proxy in front of the same handler,
and idgate's forward-auth check; writes bench/results/proxy.json.

Run: .venv/bin/python bench/bench_proxy.py [--quick] [--connections 32] [--duration 10] [--profile]
(--profile samples idgate with py-spy and prints its hottest frames; results go to proxy-profiled.json)
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _profile
from _stack import (
    HOST, PROXY_HOST, PROXY_PATH, RESULTS, SERVERS, Idgate, Proc, Processes, WrkSettings, cpu_seconds, exit_code,
    free_port, http_get, metric_values, mint_token, run_wrk, sigterm_as_interrupt, start_echo, start_idgate,
    start_issuer, wait_ready, warm_up, workdir, wrk_path, write_result,
)
from _servers import SMALL_BODY

RULES = 100


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    headers: dict[str, str]
    body: bytes | None            # the expected answer body (None: any)
    watched: dict[str, Proc]      # server processes whose CPU use is reported
    profile: Proc | None = None   # the process py-spy samples with --profile


def _expect(target: Target) -> None:
    """One request before the load: a wrong answer (401/403/404) must not be measured as speed."""
    status, got = http_get(target.url, target.headers)
    if status != 200 or (target.body is not None and got != target.body):
        raise RuntimeError(f"{target.name}: expected 200 with the small body, got HTTP {status}: {got[:200]!r}")


def _measure(target: Target, settings: WrkSettings, profile_dir: Path | None) -> dict[str, Any]:
    warm_up(target.url, target.headers, settings)
    profiler = None
    if profile_dir is not None and target.profile is not None:
        profiler = _profile.start(target.profile.pid, settings.duration, profile_dir / f"{_slug(target.name)}.folded")
    before = {key: cpu_seconds(proc.pid) for key, proc in target.watched.items()}
    started = time.monotonic()
    result = run_wrk(target.url, target.headers, settings).as_dict()
    wall = time.monotonic() - started
    # Cores each server used during the measured run: ~1.0 means that process is the bottleneck.
    result["cpu_share"] = {key: round((cpu_seconds(proc.pid) - before[key]) / wall, 2)
                           for key, proc in target.watched.items()}
    if profiler is not None:
        profiler.wait()
    print(f"  {target.name:<22} {result['requests_per_s']:>10.0f} req/s  p50 {result['p50_ms']:.2f} ms  "
          f"p99 {result['p99_ms']:.2f} ms  cpu {result['cpu_share']}"
          + (f"  NON-2XX {result['non_2xx']}" if result["non_2xx"] else ""), flush=True)
    return result


def _slug(name: str) -> str:
    return "-".join(name.split())


def _print_profiles(profile_dir: Path) -> None:
    for folded in sorted(profile_dir.glob("*.folded")):
        print(f"\nhottest idgate frames in {folded.name} (share of the event loop's busy samples, inclusive):")
        for share, frame in _profile.hottest(folded):
            print(f"  {share:6.1%}  {frame}")


def _audit_stats(idgate: Idgate) -> dict[str, Any]:
    metrics = metric_values(idgate.admin_url)
    batches = metrics.get("idgate_audit_batch_records_count", 0.0)
    records = metrics.get("idgate_audit_batch_records_sum", 0.0)
    with open(idgate.audit_path, "rb") as f:
        lines = sum(1 for _ in f)
    return {
        "fsync": True,
        "records_on_disk": lines,
        "fsync_batches": int(batches),
        "mean_records_per_fsync": round(records / batches, 1) if batches else None,
        "failures": metrics.get("idgate_audit_failures_total", 0.0),
        "token_cache_hits": metrics.get('idgate_token_cache_total{result="hit"}', 0.0),
        "token_cache_misses": metrics.get('idgate_token_cache_total{result="miss"}', 0.0),
    }


def run(settings: WrkSettings, profile_dir: Path | None) -> dict[str, Any]:
    with workdir("idgate-bench-") as tmp:
        procs = Processes(tmp)
        try:
            bare, bare_port = start_echo(procs, "bare")
            upstream, upstream_port = start_echo(procs, "upstream")
            _, issuer_url = start_issuer(procs)
            idgate = start_idgate(procs, tmp, issuer_url, upstream_port, rules=RULES)
            token = mint_token(issuer_url)  # minted once: every request presents the same cached token

            passthrough_port = free_port()
            passthrough = procs.start("passthrough", [sys.executable, str(SERVERS), "passthrough",
                                                      str(passthrough_port), str(upstream_port)])
            wait_ready(passthrough, f"http://{HOST}:{passthrough_port}/")

            auth = {"Authorization": f"Bearer {token}"}
            bare_target = Target("bare aiohttp", f"http://{HOST}:{bare_port}{PROXY_PATH}", {"Host": PROXY_HOST},
                                 SMALL_BODY, {"bare": bare})
            targets = [
                bare_target,
                Target("reverse proxy", f"{idgate.url}{PROXY_PATH}", {"Host": PROXY_HOST, **auth}, SMALL_BODY,
                       {"idgate": idgate.proc, "upstream": upstream}, profile=idgate.proc),
                Target("forward auth", f"{idgate.url}/.idgate/auth",
                       {"Host": PROXY_HOST, "X-Original-Method": "GET", "X-Original-URI": PROXY_PATH, **auth},
                       None, {"idgate": idgate.proc}, profile=idgate.proc),
                Target("aiohttp passthrough", f"http://{HOST}:{passthrough_port}{PROXY_PATH}", {"Host": PROXY_HOST},
                       SMALL_BODY, {"passthrough": passthrough, "upstream": upstream}),
                # The bare handler again at the end: the spread between its two runs is the noise floor.
                dataclasses.replace(bare_target, name="bare aiohttp (again)"),
            ]
            for target in targets:
                _expect(target)
            print(f"wrk -t{settings.threads} -c{settings.connections} -d{settings.duration}s --latency "
                  f"(+{settings.warmup}s warm-up) on loopback; wrk and the servers share the machine's cores",
                  flush=True)
            rows = {target.name: _measure(target, settings, profile_dir) for target in targets}
            bare_runs = [rows["bare aiohttp"]["requests_per_s"], rows["bare aiohttp (again)"]["requests_per_s"]]
            bare_rps = statistics.fmean(bare_runs)
            for row in rows.values():
                row["ratio_vs_bare"] = round(row["requests_per_s"] / bare_rps, 3) if bare_rps else None
            return {
                "benchmark": "proxy",
                "wrk": {"threads": settings.threads, "connections": settings.connections,
                        "duration_s": settings.duration, "warmup_s": settings.warmup},
                "profiled": profile_dir is not None,
                "policy_rules": RULES,
                "bare_requests_per_s": round(bare_rps, 1),
                "bare_spread": round(abs(bare_runs[0] - bare_runs[1]) / bare_rps, 3) if bare_rps else None,
                "rows": rows,
                "audit": _audit_stats(idgate),
            }
        finally:
            procs.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 s runs with 1 s warm-up")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--duration", type=int, default=None)
    parser.add_argument("--profile", action="store_true",
                        help="sample idgate with py-spy during its runs (slows it down; numbers are then not comparable)")
    args = parser.parse_args()
    if wrk_path() is None:
        print("wrk is not installed: install it with `apt-get install wrk` (Debian/Ubuntu)", file=sys.stderr)
        return 2
    duration = args.duration or (3 if args.quick else 10)
    settings = WrkSettings(threads=args.threads, connections=args.connections, duration=duration,
                           warmup=1 if args.quick else 2)
    profile_dir = RESULTS / "profiles" if args.profile else None
    if profile_dir is not None:
        if _profile.py_spy() is None:
            print("--profile needs py-spy: .venv/bin/pip install py-spy", file=sys.stderr)
            return 2
        profile_dir.mkdir(parents=True, exist_ok=True)
    with sigterm_as_interrupt():
        result = run(settings, profile_dir)
    if profile_dir is not None:
        _print_profiles(profile_dir)
    # A profiled run is slower: keep it out of the file run.py reports.
    path = write_result("proxy-profiled" if profile_dir is not None else "proxy", result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
