"""The soak (issue 15): `idgate serve --workers 2` under sustained wrk load for minutes, one worker SIGKILLed
at fixed points (the supervisor restarts it), every idgate process's RSS and open descriptors sampled from
/proc, errors split into those of the kill windows and the rest, the RSS slope per worker, every audit
segment checked with `idgate audit verify`, and every request id the upstream received reconciled with its
allow record in the audit.  Prints a table and writes bench/results/soak.json.

Run: .venv/bin/python -m bench.soak [--minutes 5] [--kills 2] [--check]    (or `make soak MINUTES=5`)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import _soak_figures as figures
from bench._servers import RECORDER_FLUSH
from bench._sitting import bench_cores, machine, pin, stamped
from bench._stack import (
    PROXY_HOST, PROXY_PATH, SERVERS, Idgate, exit_code, http_get, metric_values, mint_token, server_group,
    sigterm_as_interrupt, start_idgate, start_issuer, wait_ready, workdir, wrk_path,
)
from proxy.audit import segment_files
from tests.harness.processes import HOST, ProcessGroup, free_port

RESULT = Path(__file__).resolve().parent / "results" / "soak.json"
WORKERS = 2
WARMUP_RUN_S = 2      # a wrk run before the measured load (caches, pools), its requests reconciled too
SETTLE_S = 2.0        # idle time before the "idle" descriptor counts, for closed connections to be gone
WRK_TIMEOUT = "5s"    # a slower answer counts as a socket timeout; the machine is shared, fsync is on
EXIT_UNCLEAN = 3


@dataclass(frozen=True)
class Options:
    minutes: float
    kills: int
    connections: int
    delay_ms: int
    chunk_s: int
    window_s: int
    lead_s: int
    sample_s: float
    slope_warmup_s: float
    rotate_bytes: int
    loop: str
    output: Path
    check: bool


def parse_options() -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the load (default 5; 1 for a quick run)")
    parser.add_argument("--kills", type=int, default=2, help="worker SIGKILLs, evenly spaced (default 2: at 1/3 "
                                                              "and 2/3), worker 0, 1, ... in turn")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections, all one identity: over "
                        "the route's max_connections_per_identity (64) the rest are answered 503 identity_busy")
    parser.add_argument("--delay-ms", type=int, default=5, help="pause per connection between requests (wrk's "
                        "delay(); default 5: a steady load that leaves the shared machine some room; 0: flat out)")
    parser.add_argument("--chunk-seconds", type=int, default=5, help="wrk runs back to back of this length")
    parser.add_argument("--window-seconds", type=int, default=8, help="the wrk run holding a kill, whose errors "
                        "are the kill window's (the kill comes --lead-seconds into it)")
    parser.add_argument("--lead-seconds", type=int, default=1)
    parser.add_argument("--sample-seconds", type=float, default=2.0, help="/proc sampling interval")
    parser.add_argument("--slope-warmup", type=float, default=None, help="seconds of each process life left "
                        "out of the RSS fit (default: 10, or a tenth of the run if longer)")
    parser.add_argument("--rotate-bytes", type=int, default=8 * 1024 * 1024,
                        help="audit.rotate_bytes, small so that segments rotate during the soak")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--output", type=Path, default=RESULT)
    parser.add_argument("--check", action="store_true", help=f"exit {EXIT_UNCLEAN} unless the soak is clean "
                        "(no error outside a kill window, every kill recovered, every chain verified, "
                        "every upstream request id reconciled)")
    args = parser.parse_args()
    if wrk_path() is None:
        parser.exit(2, "wrk is not installed: install it with `apt-get install wrk` (Debian/Ubuntu)\n")
    total = args.minutes * 60
    if args.kills and total < args.kills * (args.window_seconds + args.chunk_seconds):
        parser.exit(2, f"--minutes {args.minutes} is too short for {args.kills} kill(s) of "
                       f"{args.window_seconds} s windows\n")
    return Options(args.minutes, args.kills, args.connections, args.delay_ms, args.chunk_seconds,
                   args.window_seconds, args.lead_seconds, args.sample_seconds,
                   args.slope_warmup if args.slope_warmup is not None else max(10.0, total / 10),
                   args.rotate_bytes, args.loop, args.output, args.check)


# -- idgate's processes -------------------------------------------------------------------------------


def idgate_processes(supervisor: int) -> dict[str, int]:
    """Role ("supervisor", "worker N") → pid: the supervisor's children named by their --worker-index."""
    roles = {"supervisor": supervisor}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue   # a process that ended meanwhile
        if ppid == supervisor and b"--worker-index" in argv:
            roles[f"worker {int(argv[argv.index(b'--worker-index') + 1])}"] = int(entry.name)
    return roles


def sample(supervisor: int, t: float, upstream_url: str) -> dict[str, Any]:
    """RSS (VmRSS) and open descriptors of every idgate process, how many requests the upstream got, and
    the load average."""
    processes: dict[str, Any] = {}
    for role, pid in sorted(idgate_processes(supervisor).items()):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            processes[role] = {"pid": pid, "rss_kib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}
        except (OSError, StopIteration):
            continue   # killed between the listing and the read
    try:
        received: int | None = upstream_written(upstream_url)
    except (OSError, RuntimeError):
        received = None   # a sample must not end the sampling; the final count is read after the load
    return {"t": round(t, 2), "processes": processes, "upstream_received": received,
            "loadavg_1m": round(os.getloadavg()[0], 2)}   # the shared machine's other work, to read the noise by


def upstream_written(upstream_url: str) -> int:
    """The recorder's request ids on disk (flushed now)."""
    status, body = http_get(upstream_url + RECORDER_FLUSH)
    if status != 200:
        raise RuntimeError(f"recording upstream: HTTP {status}")
    return int(json.loads(body)["written"])


class Sampler(threading.Thread):
    def __init__(self, supervisor: int, upstream_url: str, every_s: float, t0: float) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.samples: list[dict[str, Any]] = []
        self._args = supervisor, upstream_url
        self._every = every_s
        self._t0 = t0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.samples.append(sample(self._args[0], time.monotonic() - self._t0, self._args[1]))
            self._done.wait(self._every)   # the sampling interval

    def stop(self) -> None:
        self._done.set()
        self.join()


# -- load and kills -------------------------------------------------------------------------------------


def wrk_command(script: Path, idgate: Idgate, token: str, seconds: int, options: Options) -> list[str]:
    return [str(wrk_path()), "-t1", f"-c{options.connections}", f"-d{seconds}s", "--latency",
            "--timeout", WRK_TIMEOUT, "-s", str(script), "-H", f"Host: {PROXY_HOST}",
            "-H", f"Authorization: Bearer {token}", idgate.url + PROXY_PATH, "--", str(options.delay_ms)]


def kill_and_wait(idgate: Idgate, index: int, until: float, t0: float) -> dict[str, Any]:
    """SIGKILL worker `index`; how long until it has a new pid and /readyz (any worker's) says every worker
    is serving again, or None if not by `until` (monotonic)."""
    role = f"worker {index}"
    victim = idgate_processes(idgate.proc.pid)[role]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    kill: dict[str, Any] = {"worker": index, "pid": victim, "at_s": round(killed - t0, 1), "new_pid": None,
                            "recovered_s": None}
    while time.monotonic() < until:
        successor = idgate_processes(idgate.proc.pid).get(role)
        if successor not in (None, victim) and http_get(idgate.admin_url + "/readyz")[0] == 200:
            return {**kill, "new_pid": successor, "recovered_s": round(time.monotonic() - killed, 2)}
        time.sleep(0.05)   # polling another process's readiness, bounded by `until`
    return kill


def run_chunk(chunk: figures.Chunk, script: Path, idgate: Idgate, issuer_url: str, options: Options,
              t0: float) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One wrk run (a fresh token each: a soak outlives a dev token's 15 minutes), with its kill if it has one."""
    command = wrk_command(script, idgate, mint_token(issuer_url), chunk.seconds, options)
    started = time.monotonic()
    wrk = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kill = None
    if chunk.kill_worker is not None:
        time.sleep(chunk.lead_s)   # the kill's fixed point inside the window
        kill = kill_and_wait(idgate, chunk.kill_worker, started + chunk.seconds, t0)
    output, _ = wrk.communicate()
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk exited with {wrk.returncode}:\n{output}")
    result = {"start_s": round(started - t0, 1), "end_s": round(time.monotonic() - t0, 1),
              "kill_window": chunk.kill_worker is not None, **figures.parse_chunk(output)}
    print(f"  {result['start_s']:>6.1f}–{result['end_s']:<6.1f} s  {result['requests_per_s']:>7.0f} req/s  "
          f"p99 {result['latency_p99']:>8}  statuses {result['statuses']}"
          + (f"  socket {result['socket_errors']}" if any(result["socket_errors"].values()) else "")
          + (f"  KILLED worker {kill['worker']} (pid {kill['pid']}), serving again after {kill['recovered_s']} s"
             if kill else ""), flush=True)
    return result, kill


# -- after the load -------------------------------------------------------------------------------------


def verify_chains(audit_path: Path) -> dict[str, Any]:
    """`idgate audit verify` on each worker's segments (one chain per worker), oldest first."""
    chains = {}
    for index in range(WORKERS):
        live = audit_path.with_name(f"{audit_path.stem}.w{index}{audit_path.suffix}")
        files = segment_files(live)
        done = subprocess.run([sys.executable, "-m", "proxy", "audit", "verify", *map(str, files)],
                              capture_output=True, text=True, timeout=600)
        chains[f"worker {index}"] = {"segments": len(files), "ok": done.returncode == 0 and bool(files),
                                     "verify_output": (done.stdout + done.stderr).strip().splitlines()[-3:]}
    return chains


def all_segments(audit_path: Path) -> list[Path]:
    return [path for index in range(WORKERS)
            for path in segment_files(audit_path.with_name(f"{audit_path.stem}.w{index}{audit_path.suffix}"))]


def verdict(result: dict[str, Any], options: Options) -> dict[str, bool]:
    reconciled = result["reconciliation"]
    return {
        "no_errors_outside_kill_windows": not result["errors"]["outside_kill_windows"],
        "every_kill_recovered": len(result["kills"]) == options.kills
        and all(kill["recovered_s"] is not None for kill in result["kills"]),
        "restarts_counted": result["worker_restarts_total"] == options.kills,
        "every_chain_verified": all(chain["ok"] for chain in result["audit_chains"].values()),
        "every_upstream_id_reconciled": reconciled["upstream_unique_ids"] > 0 and not reconciled["unreconciled"]
        and not reconciled["upstream_duplicate_ids"] and not reconciled["upstream_without_request_id"],
    }


def soak(options: Options) -> dict[str, Any]:
    cores = bench_cores()
    total_s = round(options.minutes * 60)
    plan = figures.schedule(total_s, options.kills, WORKERS, options.chunk_s, options.window_s, options.lead_s)
    with workdir("idgate-soak-") as tmp:
        procs = server_group(tmp)
        try:
            upstream_url, ids_file = start_recorder(procs, tmp)
            _, issuer_url = start_issuer(procs)
            idgate = start_idgate(procs, tmp, issuer_url, int(upstream_url.rsplit(":", 1)[1]), loop=options.loop,
                                  workers=WORKERS, audit={"fsync": True, "rotate_bytes": options.rotate_bytes})
            pin(idgate.proc.pid, cores.every)   # two workers cannot share one core; restarted ones inherit this
            script = tmp / "soak.lua"
            script.write_text(figures.WRK_SCRIPT)
            print(f"soak: {total_s} s of wrk -c{options.connections} (delay {options.delay_ms} ms per connection) "
                  f"against idgate --workers {WORKERS}, {options.kills} kill(s); idgate on cores "
                  f"{sorted(cores.every)}, wrk, upstream and issuer on {sorted(cores.load)}", flush=True)
            print("  warm-up run (not in the figures; its requests are reconciled too):", flush=True)
            warm, _ = run_chunk(figures.Chunk(0, WARMUP_RUN_S), script, idgate, issuer_url, options, time.monotonic())
            time.sleep(SETTLE_S)   # idle: connections wrk closed are gone from the counts
            idle_before = sample(idgate.proc.pid, 0.0, upstream_url)
            t0 = time.monotonic()
            sampler = Sampler(idgate.proc.pid, upstream_url, options.sample_s, t0)
            sampler.start()
            chunks, kills = [], []
            try:
                for chunk in plan:
                    ran, kill = run_chunk(chunk, script, idgate, issuer_url, options, t0)
                    chunks.append(ran)
                    kills += [kill] if kill else []
            finally:
                sampler.stop()
            load_s = time.monotonic() - t0
            time.sleep(SETTLE_S)
            idle_after = sample(idgate.proc.pid, load_s + SETTLE_S, upstream_url)
            restarts = sum(value for name, value in metric_values(idgate.admin_url).items()
                           if name.startswith("idgate_worker_restarts_total{"))
            procs.stop(idgate.proc)   # SIGTERM: the workers finish their records and close their segments
            upstream_written(upstream_url)
            reconciliation = figures.reconcile(ids_file, all_segments(idgate.audit_path))
            audit_chains = verify_chains(idgate.audit_path)
        finally:
            procs.stop_all()
    requests = sum(chunk["requests"] for chunk in chunks)
    result: dict[str, Any] = {
        "benchmark": "soak",
        "command": " ".join(["python -m bench.soak", *sys.argv[1:]]),
        "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
                     "workers": WORKERS, "wrk_timeout": WRK_TIMEOUT, "audit_fsync": True},
        "pinning": {"idgate": sorted(cores.every), "wrk_upstream_issuer": sorted(cores.load),
                    "why": "two workers cannot share one core; the load keeps off the first"},
        "load_seconds": round(load_s, 1),
        "requests": requests,
        "mean_requests_per_s": round(requests / load_s, 1),
        "statuses": dict(sorted(sum_statuses(chunks).items())),
        "kills": kills,
        "worker_restarts_total": int(restarts),
        "errors": {"outside_kill_windows": figures.errors_by_kind(c for c in chunks if not c["kill_window"]),
                   "in_kill_windows": figures.errors_by_kind(c for c in chunks if c["kill_window"])},
        "rss": figures.rss_slopes(sampler.samples, options.slope_warmup_s),
        "fds": figures.fd_figures(idle_before, idle_after, sampler.samples),
        "audit_chains": audit_chains,
        "reconciliation": reconciliation,
        "warmup_run": warm,
        "chunks": chunks,
        "samples": sampler.samples,
    }
    result["verdict"] = verdict(result, options)
    result["clean"] = all(result["verdict"].values())
    return result


def start_recorder(procs: ProcessGroup, tmp: Path) -> tuple[str, Path]:
    port, ids_file = free_port(), tmp / "upstream-request-ids.txt"
    proc = procs.start("upstream", [*SERVERS, "recorder", str(port), str(ids_file)])
    wait_ready(proc, f"http://{HOST}:{port}{RECORDER_FLUSH}")
    return f"http://{HOST}:{port}", ids_file


def sum_statuses(chunks: list[dict[str, Any]]) -> dict[int, int]:
    total: dict[int, int] = {}
    for chunk in chunks:
        for status, n in chunk["statuses"].items():
            total[status] = total.get(status, 0) + n
    return total


def print_table(result: dict[str, Any]) -> None:
    rec = result["reconciliation"]
    rows = [
        ("load", f"{result['load_seconds']} s, {result['requests']:,} requests "
                 f"({result['mean_requests_per_s']:,.0f} req/s), statuses {result['statuses']}"),
        *((f"kill {n} at {k['at_s']} s", f"worker {k['worker']} (pid {k['pid']}): serving again after "
                                          f"{k['recovered_s']} s (new pid {k['new_pid']})")
          for n, k in enumerate(result["kills"], 1)),
        ("worker restarts (metric)", str(result["worker_restarts_total"])),
        ("errors outside kill windows", str(result["errors"]["outside_kill_windows"] or "none")),
        ("errors in kill windows", str(result["errors"]["in_kill_windows"] or "none")),
        *((f"RSS slope, {role}", f"{rss['slope_kib_per_min']} KiB/min (RSS {rss['rss_first_kib']:,} → "
                                 f"{rss['rss_last_kib']:,} KiB, max {rss['rss_max_kib']:,})")
          for role, rss in result["rss"].items()),
        *((f"open fds, {role}", f"idle {fds['idle_before']} before, {fds['idle_after']} after; "
                                f"max {fds['max_under_load']} under load")
          for role, fds in result["fds"].items()),
        *((f"audit verify, {role}", f"{'ok' if chain['ok'] else 'FAILED'}: {' '.join(chain['verify_output'])}")
          for role, chain in result["audit_chains"].items()),
        ("reconciliation", f"{rec['upstream_unique_ids']:,} request ids at the upstream, {rec['unreconciled']} "
                           f"without an allow record; {rec['allow_records_without_upstream_hit']} allow records "
                           f"without an upstream hit, {rec['deny_records']} denials, "
                           f"{rec['upstream_duplicate_ids']} duplicate ids"),
    ]
    loads = [sample["loadavg_1m"] for sample in result["samples"]]
    rows.append(("load average (1 min)", f"{result['loadavg']['start'][0]} at the start, "
                                         f"{min(loads, default=0)}–{max(loads, default=0)} during the load, "
                                         f"{result['loadavg']['end'][0]} at the end"))
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"{'verdict':<{width}}  {'clean' if result['clean'] else 'NOT CLEAN'}: "
          + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in result["verdict"].items()))


def main() -> int:
    options = parse_options()
    at_start = machine()
    with sigterm_as_interrupt():
        result = stamped(soak(options), at_start)
    print_table(result)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {options.output}")
    return EXIT_UNCLEAN if options.check and not result["clean"] else 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
