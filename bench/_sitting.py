"""The discipline of one load-benchmark sitting: the server under test alone on one core and everything
else on the other, the machine and its load average, targets measured in interleaved rounds (wrk's
figures, or another load generator's, plus each server's CPU per request), medians and same-round
ratios, a short profile per surface apart from the measured runs, and each target's verdict in the one
shape bench/run.py prints."""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from bench import _profile
from bench._stack import RESULTS, WrkSettings, cpu_seconds, http_get, process_tree, run_wrk, warm_up, wrk_path
from tests.harness.processes import ServerProcess

Runs = dict[str, list[dict[str, Any]]]    # target name → its result in each round

# -- cores --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cores:
    """The server under test alone on `server`; wrk, the upstreams, the issuer and the benchmark script on
    `load`.  On a one-core machine both are that core: nothing can be pinned apart, and `describe` says so."""

    server: frozenset[int]
    load: frozenset[int]

    @property
    def every(self) -> frozenset[int]:
        return self.server | self.load

    def describe(self) -> dict[str, Any]:
        return {"server_under_test": sorted(self.server), "load_generator_upstream_issuer": sorted(self.load),
                "pinned_apart": not (self.server & self.load)}


def bench_cores() -> Cores:
    """Split the allowed cores (the first for the server under test) and move this process to the load
    side, so every process it starts from now on (wrk, upstreams, the issuer) starts there too."""
    allowed = sorted(os.sched_getaffinity(0))
    cores = Cores(frozenset(allowed[:1]), frozenset(allowed[1:] or allowed[:1]))
    os.sched_setaffinity(0, cores.load)
    return cores


def pin(pid: int, cores: Iterable[int]) -> None:
    """Every thread of `pid` and of its descendants onto `cores`: sched_setaffinity moves one thread, and
    a thread started later inherits its creator's mask."""
    mask = set(cores)
    for process in process_tree(pid):
        for task in Path(f"/proc/{process}/task").iterdir():
            try:
                os.sched_setaffinity(int(task.name), mask)
            except ProcessLookupError:
                continue   # a thread that ended meanwhile


# -- the machine --------------------------------------------------------------------------------


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _wrk_version() -> str | None:
    wrk = wrk_path()
    if wrk is None:
        return None
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=5)
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0] if first else "unknown"


def machine() -> dict[str, Any]:
    try:
        uvloop_version: str | None = metadata.version("uvloop")
    except metadata.PackageNotFoundError:
        uvloop_version = None
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name")), ""),
        "loadavg": loadavg(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "aiohttp": metadata.version("aiohttp"),
        "uvloop": uvloop_version,
        "wrk": _wrk_version(),
    }


def stamped(result: dict[str, Any], at_start: dict[str, Any]) -> dict[str, Any]:
    """`result` with the machine as it was at the start (`machine()`) and the load average at start and end:
    other work on the machine shifts every figure, and the load average says how much there was."""
    return {**result, "machine": at_start, "loadavg": {"start": at_start["loadavg"], "end": loadavg()}}


# -- options ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadOptions:
    settings: WrkSettings
    rounds: int
    profile_seconds: int     # 0: no profiles


def load_options(description: str | None) -> LoadOptions:
    """The command line every load benchmark takes; exits 2 when wrk is missing."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round of 2 s runs, 2 s profiles (a smoke check)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--duration", type=int, default=None, help="seconds per wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy runs")
    args = parser.parse_args()
    if wrk_path() is None:
        parser.exit(2, "wrk is not installed: install it with `apt-get install wrk` (Debian/Ubuntu)\n")
    settings = WrkSettings(threads=args.threads, connections=args.connections,
                           duration=args.duration or (2 if args.quick else 5), warmup=1)
    return LoadOptions(settings, args.rounds or (1 if args.quick else 3),
                       0 if args.no_profile else (2 if args.quick else 5))


# -- measuring ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadTarget:
    """What one wrk run measures: a URL and headers, the answer body it must get (None: any 200), the
    processes whose CPU is reported (the first is the server under test) and wrk's settings."""

    name: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    watched: dict[str, ServerProcess]
    settings: WrkSettings

    @property
    def server_under_test(self) -> str:
        return next(iter(self.watched))

    def check(self) -> None:
        """One request before the load: a wrong answer (401/403/404) must not be measured as speed."""
        status, got = http_get(self.url, self.headers)
        if status != 200 or (self.body is not None and got != self.body):
            raise RuntimeError(f"{self.name}: expected 200{' with the small body' if self.body else ''}, "
                               f"got HTTP {status}: {got[:200]!r}")

    def measure(self, round_no: int) -> dict[str, Any]:
        """One wrk run after a discarded warm-up: wrk's figures and the watched servers' CPU (watched_run)."""
        warm_up(self.url, self.headers, self.settings)
        result = watched_run(self.watched, lambda: run_wrk(self.url, self.headers, self.settings).as_dict())
        print_run(round_no, self.name, result)
        return result

    def profile(self, pid: int, seconds: int) -> dict[str, Any]:
        """py-spy on `pid` while wrk loads this target as in the measured runs, which it would slow."""
        def load(duration: int) -> None:
            run_wrk(self.url, self.headers, dataclasses.replace(self.settings, duration=duration, warmup=0))
        return _profile.profiled(pid, self.name, seconds, load, RESULTS / "profiles")


class Target(Protocol):
    """What a sitting measures in turn: a LoadTarget (wrk), or another load generator's target with the
    same figures (requests_per_s, p50_ms, p99_ms, requests, non_2xx, socket_errors, and watched_run's)."""

    @property
    def name(self) -> str: ...
    @property
    def server_under_test(self) -> str: ...
    def check(self) -> None: ...
    def measure(self, round_no: int) -> dict[str, Any]: ...
    def profile(self, pid: int, seconds: int) -> dict[str, Any]: ...


class RoundOptions(Protocol):
    """What a sitting needs of a benchmark's options (LoadOptions has it)."""

    @property
    def rounds(self) -> int: ...
    @property
    def profile_seconds(self) -> int: ...


def watched_run(watched: Mapping[str, ServerProcess], run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`run()`'s figures, with each watched server's CPU during it (with its worker processes) as cores in
    use (~1.0: the bottleneck) and µs per request."""
    before = {key: cpu_seconds(proc.pid) for key, proc in watched.items()}
    started = time.monotonic()
    result = run()
    wall = time.monotonic() - started
    used = {key: cpu_seconds(proc.pid) - before[key] for key, proc in watched.items()}
    requests = result["requests"]
    result["cpu_share"] = {key: round(cpu / wall, 2) for key, cpu in used.items()}
    result["cpu_us_per_request"] = {key: round(cpu / requests * 1e6, 1) if requests else None
                                    for key, cpu in used.items()}
    return result


def print_run(round_no: int, name: str, result: dict[str, Any]) -> None:
    print(f"  {round_no}  {name:<38} {result['requests_per_s']:>9.0f} req/s  p50 {result['p50_ms']:.3f} ms  "
          f"p99 {result['p99_ms']:.2f} ms  CPU µs/req {result['cpu_us_per_request']}"
          + (f"  NON-2XX {result['non_2xx']}" if result["non_2xx"] else "")
          + (f"  SOCKET ERRORS {result['socket_errors']}" if result["socket_errors"] else ""), flush=True)


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from a target's rounds: medians, with the per-round figures kept beside them."""
    def median_of(field: str) -> dict[str, float | None]:
        keys = sorted({key for run in runs for key in run[field]})
        values = {key: [run[field][key] for run in runs if run[field].get(key) is not None] for key in keys}
        return {key: round(statistics.median(v), 2) if v else None for key, v in values.items()}

    return {
        "requests_per_s": round(statistics.median(run["requests_per_s"] for run in runs), 1),
        "p50_ms": round(statistics.median(run["p50_ms"] for run in runs), 3),
        "p99_ms": round(statistics.median(run["p99_ms"] for run in runs), 3),
        "requests": sum(run["requests"] for run in runs),
        "non_2xx": sum(run["non_2xx"] for run in runs),
        "socket_errors": next((run["socket_errors"] for run in runs if run["socket_errors"]), None),
        "cpu_share": median_of("cpu_share"),
        "cpu_us_per_request": median_of("cpu_us_per_request"),
        "rounds_requests_per_s": [run["requests_per_s"] for run in runs],
        "rounds_p50_ms": [run["p50_ms"] for run in runs],
    }


@dataclass(frozen=True)
class Sitting:
    runs: Runs
    rows: dict[str, dict[str, Any]]
    profiles: dict[str, dict[str, Any]]

    def result(self, benchmark: str, options: LoadOptions, **fields: Any) -> dict[str, Any]:
        """The benchmark's JSON: wrk's settings, the rows, the CPU µs per request of each row's server
        under test (medians over the rounds), the profiles and whatever else the benchmark says."""
        settings = options.settings
        return {
            "benchmark": benchmark,
            "wrk": {"threads": settings.threads, "connections": settings.connections,
                    "duration_s": settings.duration, "warmup_s": settings.warmup, "rounds": options.rounds},
            **fields,
            "rows": self.rows,
            "cpu_us_per_request": {name: row["cpu_us_per_request"][row["server_under_test"]]
                                   for name, row in self.rows.items()},
            "profiles": self.profiles,
        }


def sitting(targets: Sequence[Target], options: RoundOptions, profiled: Mapping[str, int]) -> Sitting:
    """Check every target answers right, then measure each once per round, in turn (a burst of outside
    load lands on one round of every target, not on all the runs of one), then profile the targets named
    in `profiled` (target name → pid to sample)."""
    for target in targets:
        target.check()
    runs: Runs = {target.name: [] for target in targets}
    for round_no in range(1, options.rounds + 1):
        for target in targets:
            runs[target.name].append(target.measure(round_no))
    rows = {target.name: {**median_row(runs[target.name]), "server_under_test": target.server_under_test}
            for target in targets}
    profiles = {target.name: target.profile(profiled[target.name], options.profile_seconds)
                for target in targets if target.name in profiled}
    return Sitting(runs, rows, profiles)


# -- verdicts -----------------------------------------------------------------------------------


def same_round_ratio(runs: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> tuple[float, list[float]]:
    """req/s over the baseline's req/s of the same round (runs made moments apart): median and each round's."""
    ratios = [round(run["requests_per_s"] / base["requests_per_s"], 3) for run, base in zip(runs, baseline)]
    return round(statistics.median(ratios), 3), ratios


def same_round_p50_difference_us(runs: list[dict[str, Any]], baseline: list[dict[str, Any]],
                                 ) -> tuple[float, list[float]]:
    return same_round_difference_us(runs, baseline, "p50_ms")


def same_round_difference_us(runs: list[dict[str, Any]], baseline: list[dict[str, Any]], field: str,
                             ) -> tuple[float, list[float]]:
    """`field` (a latency in ms) minus the baseline's of the same round, in µs: median and each round's."""
    differences = [round((run[field] - base[field]) * 1000, 1) for run, base in zip(runs, baseline)]
    return round(statistics.median(differences), 1), differences


def clean(*runs: list[dict[str, Any]]) -> bool:
    """No run answered anything but 2xx or lost a connection: a wrong answer must not count as speed."""
    return all(not run["non_2xx"] and not run["socket_errors"] for target_runs in runs for run in target_runs)


def verdict(goal: str | None, measured: str, value: float, met: bool | None, rounds: list[float],
            ) -> dict[str, Any]:
    """A target (`goal` and whether it is met) or, with goal None, a figure reported beside the targets."""
    return {"target": goal or "(reported)", "measured": measured, "value": value, "rounds": rounds, "met": met}


def ratio_verdict(runs: Runs, name: str, baseline: str, goal: str | None = None,
                  floor: float | None = None) -> dict[str, Any]:
    """`name`'s req/s as a share of `baseline`'s, met when at least `floor` (None: reported, no target)."""
    value, rounds = same_round_ratio(runs[name], runs[baseline])
    met = None if floor is None else clean(runs[name], runs[baseline]) and value >= floor
    return verdict(goal, f"{value:.2f} × {baseline}", value, met, rounds)
