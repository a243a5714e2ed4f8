"""Load benchmark with wrk: a bare aiohttp handler, idgate's reverse proxy in front of the same handler,
idgate's forward-auth check, and a no-op aiohttp pass-through proxy (the stack's own proxying ceiling),
in interleaved rounds; writes bench/results/proxy.json.

Run: .venv/bin/python -m bench.bench_proxy [--quick] [--connections 32] [--duration 5] [--rounds 3] [--profile]
(--profile samples idgate with py-spy and prints its hottest frames; results go to proxy-profiled.json)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import _profile
from bench._servers import SMALL_BODY
from bench._stack import (
    PROXY_HOST, PROXY_PATH, RESULTS, SERVERS, Idgate, WrkSettings, cpu_seconds, exit_code, http_get, metric_values,
    mint_token, run_wrk, server_group, sigterm_as_interrupt, start_echo, start_idgate, start_issuer, wait_ready,
    warm_up, workdir, write_result, wrk_path,
)
from tests.harness.processes import HOST, ServerProcess, free_port

RULES = 100


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    headers: dict[str, str]
    body: bytes | None            # the expected answer body (None: any)
    watched: dict[str, ServerProcess]      # server processes whose CPU use is reported
    profile: ServerProcess | None = None   # the process py-spy samples with --profile


def _expect(target: Target) -> None:
    """One request before the load: a wrong answer (401/403/404) must not be measured as speed."""
    status, got = http_get(target.url, target.headers)
    if status != 200 or (target.body is not None and got != target.body):
        raise RuntimeError(f"{target.name}: expected 200 with the small body, got HTTP {status}: {got[:200]!r}")


def _measure(target: Target, settings: WrkSettings, profile_dir: Path | None, round_no: int) -> dict[str, Any]:
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
    print(f"  {round_no}  {target.name:<22} {result['requests_per_s']:>10.0f} req/s  p50 {result['p50_ms']:.2f} ms  "
          f"p99 {result['p99_ms']:.2f} ms  cpu {result['cpu_share']}"
          + (f"  NON-2XX {result['non_2xx']}" if result["non_2xx"] else ""), flush=True)
    return result


def _combine(runs: list[dict[str, Any]], bare_runs: list[float]) -> dict[str, Any]:
    """One row from a target's rounds: medians, and the median of the per-round ratios to the bare
    handler (each round's ratio compares runs made moments apart)."""
    ratios = [run["requests_per_s"] / bare for run, bare in zip(runs, bare_runs) if bare]
    keys = {key for run in runs for key in run["cpu_share"]}
    return {
        "requests_per_s": round(statistics.median(run["requests_per_s"] for run in runs), 2),
        "p50_ms": round(statistics.median(run["p50_ms"] for run in runs), 3),
        "p99_ms": round(statistics.median(run["p99_ms"] for run in runs), 3),
        "requests": sum(run["requests"] for run in runs),
        "non_2xx": sum(run["non_2xx"] for run in runs),
        "socket_errors": next((run["socket_errors"] for run in runs if run["socket_errors"]), None),
        "cpu_share": {key: round(statistics.median(run["cpu_share"].get(key, 0.0) for run in runs), 2)
                      for key in sorted(keys)},
        "ratio_vs_bare": round(statistics.median(ratios), 3) if ratios else None,
        "rounds_requests_per_s": [run["requests_per_s"] for run in runs],
    }


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
        procs = server_group(tmp)
        try:
            bare, bare_port = start_echo(procs, "bare")
            upstream, upstream_port = start_echo(procs, "upstream")
            _, issuer_url = start_issuer(procs)
            idgate = start_idgate(procs, tmp, issuer_url, upstream_port, rules=RULES)
            token = mint_token(issuer_url)  # minted once: every request presents the same cached token

            passthrough_port = free_port()
            passthrough = procs.start("passthrough", [*SERVERS, "passthrough",
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
            ]
            for target in targets:
                _expect(target)
            print(f"wrk -t{settings.threads} -c{settings.connections} -d{settings.duration}s --latency "
                  f"(+{settings.warmup}s warm-up), {settings.rounds} interleaved round(s), on loopback; "
                  "wrk and the servers share the machine's cores", flush=True)
            # Targets take turns within each round, so a burst of outside load hits one round of every
            # target rather than all runs of one; only the first round is profiled.
            runs: dict[str, list[dict[str, Any]]] = {target.name: [] for target in targets}
            for round_no in range(1, settings.rounds + 1):
                for target in targets:
                    runs[target.name].append(_measure(target, settings, profile_dir if round_no == 1 else None,
                                                      round_no))
            bare_runs = [run["requests_per_s"] for run in runs[bare_target.name]]
            rows = {name: _combine(target_runs, bare_runs) for name, target_runs in runs.items()}
            bare_rps = statistics.median(bare_runs)
            return {
                "benchmark": "proxy",
                "wrk": {"threads": settings.threads, "connections": settings.connections,
                        "duration_s": settings.duration, "warmup_s": settings.warmup, "rounds": settings.rounds},
                "profiled": profile_dir is not None,
                "policy_rules": RULES,
                "bare_requests_per_s": round(bare_rps, 1),
                # (max - min) / median of the bare handler's rounds: the noise floor of this run.
                "bare_spread": round((max(bare_runs) - min(bare_runs)) / bare_rps, 3) if bare_rps else None,
                "rows": rows,
                "audit": _audit_stats(idgate),
            }
        finally:
            procs.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one round of 3 s runs with 1 s warm-up")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--duration", type=int, default=None, help="seconds per wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    parser.add_argument("--profile", action="store_true",
                        help="sample idgate with py-spy during its runs (slows it down; numbers are then not comparable)")
    args = parser.parse_args()
    if wrk_path() is None:
        print("wrk is not installed: install it with `apt-get install wrk` (Debian/Ubuntu)", file=sys.stderr)
        return 2
    settings = WrkSettings(threads=args.threads, connections=args.connections,
                           duration=args.duration or (3 if args.quick else 5), warmup=1,
                           rounds=args.rounds or (1 if args.quick else 3))
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
