"""Issue 13's cost of tracing, in one sitting with wrk: idgate's reverse proxy with tracing off, on at 100 %
sampling and on at 1 %, the spans exported over OTLP/HTTP to a real receiver (oteltest's sink, the tests'
tests/harness/otlp_receiver.py) on the load core; with --baseline DIR also the same proxy from another
checkout (the build before tracing), so "off costs nothing" is measured, not assumed.  Each idgate runs alone
on the server core; targets take turns over rounds; ratios are medians of same-round ratios, of req/s (the
targets) and, reported beside them, of idgate's CPU µs per request.  The spans idgate exported and dropped
go into the JSON (a dropped span is cheaper than an exported one: a row that dropped many says less), and
then, in process, what tracing's calls cost one request (bench/_tracing_cost.py: a shared machine's wrk
figures cannot resolve a few µs).  Writes bench/results/tracing.json.

With --instructions N, each row's idgate is then started again alone under callgrind and N sequential
requests are counted in instructions (bench/_instructions.py; about a minute a row), with a row for tracing
on and nothing sampled: counts that a neighbour's load does not move.

Run: .venv/bin/python -m bench.bench_tracing [--quick] [--rounds 3] [--duration 5] [--connections 32]
                                             [--no-profile] [--baseline DIR] [--instructions 500]
"""

from __future__ import annotations

import socket
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._instructions import instructions_per_request
from bench._servers import SMALL_BODY
from bench._tracing_cost import tracing_cost
from bench._sitting import (
    Cores, LoadOptions, LoadTarget, Runs, bench_cores, load_options, pin, ratio_verdict, sitting, verdict,
)
from bench._stack import (
    PROXY_HOST, PROXY_PATH, Idgate, exit_code, measured_and_written, metric_values, mint_token, server_group,
    start_echo, start_idgate, start_issuer, workdir,
)
from tests.harness.paths import HARNESS
from tests.harness.processes import HOST, ProcessGroup, ServerProcess, free_port

RULES = 100
OFF, FULL, ONE_PERCENT, BASELINE = ("tracing off", "tracing on, 100 % sampled", "tracing on, 1 % sampled",
                                    "before tracing (--baseline)")
NOTHING_SAMPLED = "tracing on, nothing sampled"     # counted by callgrind only: the cost of on, apart
SLUGS = {OFF: "idgate-off", FULL: "idgate-full", ONE_PERCENT: "idgate-1pct", BASELINE: "idgate-baseline",
         NOTHING_SAMPLED: "idgate-0pct"}
SAMPLING = {FULL: 1.0, ONE_PERCENT: 0.01}
OFF_FLOOR = 0.98          # tracing off: within 2 % of the build before it
ONE_PERCENT_FLOOR = 0.95  # 1 % sampling: within 5 % of tracing off


def _row(name: str) -> str:
    return f"reverse proxy, {name}"


def _start_receiver(procs: ProcessGroup, tmp: Path) -> str:
    port = free_port()
    out = tmp / "otlp"
    out.mkdir()
    proc = procs.start("otlp-receiver", [sys.executable, str(HARNESS / "otlp_receiver.py"), "--port", str(port),
                                         "--out", str(out)])

    def accepts() -> bool:
        with socket.create_connection((HOST, port), timeout=1):
            return True

    proc.wait_until(accepts, "accepting connections")
    return f"http://{HOST}:{port}/v1/traces"


@dataclass(frozen=True)
class _Stack:
    upstream: ServerProcess
    issuer_url: str
    upstream_port: int
    auth: dict[str, str]
    configs: dict[str, dict[str, Any]]      # row → start_idgate's keyword arguments


def _stack(procs: ProcessGroup, tmp: Path, baseline: Path | None) -> _Stack:
    upstream, upstream_port = start_echo(procs, "upstream")
    _, issuer_url = start_issuer(procs)
    endpoint = _start_receiver(procs, tmp)
    auth = {"Host": PROXY_HOST, "Authorization": f"Bearer {mint_token(issuer_url)}"}
    # The order of each round: the baseline and tracing off side by side, 100 % last (the receiver then has
    # until the next round to take in its spans).
    configs: dict[str, dict[str, Any]] = {BASELINE: {"source": baseline}} if baseline is not None else {}
    configs[OFF] = {}
    configs.update({name: {"tracing": {"endpoint": endpoint, "sampling_ratio": ratio}}
                    for name, ratio in sorted(SAMPLING.items(), key=lambda item: item[1])})
    return _Stack(upstream, issuer_url, upstream_port, auth, configs)


def _targets(procs: ProcessGroup, tmp: Path, cores: Cores, options: LoadOptions, stack: _Stack,
             ) -> tuple[list[LoadTarget], dict[str, Idgate]]:
    targets, idgates = [], {}
    for name, extra in stack.configs.items():
        idgate = idgates[name] = start_idgate(procs, tmp, stack.issuer_url, stack.upstream_port, name=SLUGS[name],
                                              rules=RULES, **extra)
        pin(idgate.proc.pid, cores.server)
        targets.append(LoadTarget(_row(name), idgate.url + PROXY_PATH, stack.auth, SMALL_BODY,
                                  {"idgate": idgate.proc, "upstream": stack.upstream}, options.settings))
    return targets, idgates


def _instructions(procs: ProcessGroup, tmp: Path, cores: Cores, stack: _Stack, requests: int) -> dict[str, Any]:
    """Each row's idgate again, alone under callgrind (bench/_instructions.py), plus tracing on with nothing
    sampled: thousands of instructions per request, and the ratios the targets are about."""
    configs = dict(stack.configs)
    configs[NOTHING_SAMPLED] = {"tracing": {**configs[ONE_PERCENT]["tracing"], "sampling_ratio": 0.0}}
    counts: dict[str, float] = {}
    for name, extra in configs.items():
        def start(wrapper: list[str], timeout: float, name: str = name, extra: dict[str, Any] = extra) -> Idgate:
            idgate = start_idgate(procs, tmp, stack.issuer_url, stack.upstream_port, name=f"{SLUGS[name]}-callgrind",
                                  rules=RULES, wrapper=wrapper, startup_timeout=timeout, **extra)
            pin(idgate.proc.pid, cores.server)
            started.append(idgate)
            return idgate

        started: list[Idgate] = []
        try:
            counts[name] = instructions_per_request(start, stack.auth, requests,
                                                    tmp / f"callgrind-{SLUGS[name]}" / "callgrind.out")
        finally:
            for idgate in started:
                procs.stop(idgate.proc)
        print(f"  {_row(name):<58} {counts[name]:>8.1f} k instructions per request", flush=True)
    pairs = [(NOTHING_SAMPLED, OFF), (ONE_PERCENT, OFF), (FULL, OFF)] + ([(OFF, BASELINE)] if BASELINE in counts else [])
    return {"requests": requests, "k_instructions_per_request": counts,
            "ratios": {f"{name} vs {base}": round(counts[name] / counts[base], 4) for name, base in pairs}}


def _cpu_ratio(runs: Runs, name: str, baseline: str) -> dict[str, Any]:
    """idgate's CPU µs per request over the baseline's, same round (reported, no target): a neighbour's load
    moves it less than req/s, since a core taken away costs time but not CPU."""
    ratios = [round(run["cpu_us_per_request"]["idgate"] / base["cpu_us_per_request"]["idgate"], 3)
              for run, base in zip(runs[name], runs[baseline])]
    value = round(statistics.median(ratios), 3)
    return verdict(None, f"{value:.2f} × {baseline} CPU µs per request (above 1: costs more)", value, None, ratios)


def _judge(runs: Runs, baseline: bool) -> dict[str, dict[str, Any]]:
    judged = {
        "tracing on at 1 % vs off": ratio_verdict(runs, _row(ONE_PERCENT), _row(OFF),
                                                  f"≥ {ONE_PERCENT_FLOOR:.2f} × tracing off req/s", ONE_PERCENT_FLOOR),
        "tracing on at 100 % vs off": ratio_verdict(runs, _row(FULL), _row(OFF)),
        "CPU per request, 1 % vs off": _cpu_ratio(runs, _row(ONE_PERCENT), _row(OFF)),
    }
    if baseline:
        judged["tracing off vs the build before tracing"] = ratio_verdict(
            runs, _row(OFF), _row(BASELINE), f"≥ {OFF_FLOOR:.2f} × the build before tracing", OFF_FLOOR)
        judged["CPU per request, off vs the build before tracing"] = _cpu_ratio(runs, _row(OFF), _row(BASELINE))
    return judged


def _spans(idgate: Idgate) -> dict[str, float]:
    metrics = metric_values(idgate.admin_url)
    return {name: value for name, value in metrics.items()
            if name.startswith("idgate_trace_spans") and "_created" not in name}


def run(options: LoadOptions, baseline: Path | None, instructions: int) -> dict[str, Any]:
    cores = bench_cores()
    with workdir("idgate-bench-tracing-") as tmp:
        procs = server_group(tmp)
        try:
            stack = _stack(procs, tmp, baseline)
            targets, idgates = _targets(procs, tmp, cores, options, stack)
            settings = options.settings
            print(f"wrk -t{settings.threads} -c{settings.connections} -d{settings.duration}s --latency, "
                  f"{options.rounds} interleaved round(s); idgate on core(s) {sorted(cores.server)}, wrk, upstream, "
                  f"issuer and OTLP receiver on {sorted(cores.load)}", flush=True)
            # Where tracing's CPU goes, apart from the measured runs: a py-spy profile per tracing row.
            done = sitting(targets, options, {_row(name): idgates[name].proc.pid for name in (OFF, FULL, ONE_PERCENT)})
            cost = tracing_cost()
            for name, value in cost.items():
                print(f"  {name:<58} {value:>8.2f}", flush=True)
            spans = {name: _spans(idgate) for name, idgate in idgates.items()}
            for idgate in idgates.values():     # the sitting's servers are done: callgrind's idgates run alone
                procs.stop(idgate.proc)
            counted = _instructions(procs, tmp, cores, stack, instructions) if instructions else {"skipped": True}
            return done.result("tracing", options, pinning=cores.describe(), policy_rules=RULES, in_process=cost,
                               instructions=counted, baseline=str(baseline) if baseline else None, spans=spans,
                               targets=_judge(done.runs, baseline is not None))
        finally:
            procs.stop_all()


def main() -> int:
    baseline = None
    if "--baseline" in sys.argv:      # taken out before the shared load options parse the rest
        at = sys.argv.index("--baseline")
        baseline = Path(sys.argv[at + 1]).resolve()
        del sys.argv[at:at + 2]
    instructions = 0
    if "--instructions" in sys.argv:
        at = sys.argv.index("--instructions")
        instructions = int(sys.argv[at + 1])
        del sys.argv[at:at + 2]
    options = load_options(__doc__)
    return measured_and_written("tracing", lambda: run(options, baseline, instructions))


if __name__ == "__main__":
    sys.exit(exit_code(main))
