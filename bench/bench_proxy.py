"""Issue 9's targets for idgate's own surfaces, in one sitting with wrk: the bare aiohttp handler, idgate's
reverse proxy and forward-auth check in front of the same handler (each on asyncio and on uvloop), an
aiohttp pass-through proxy (the stack's proxying floor), the added latency at one connection, and
`--workers 2` against 1.  Each server under test runs alone on one core, wrk, the upstream and the
issuer on the other; targets take turns over rounds; ratios are medians of same-round ratios.  Then a
short py-spy run per surface, apart from the measured ones.  Writes bench/results/proxy.json.

Run: .venv/bin/python -m bench.bench_proxy [--quick] [--rounds 3] [--duration 5] [--connections 32] [--no-profile]
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from bench._servers import SMALL_BODY
from bench._sitting import (
    Cores, LoadOptions, LoadTarget, Runs, bench_cores, clean, load_options, pin, ratio_verdict,
    same_round_p50_difference_us, sitting, verdict,
)
from bench._stack import (
    PROXY_HOST, PROXY_PATH, SERVERS, Idgate, WrkSettings, audit_stats, exit_code, measured_and_written, mint_token,
    server_group, start_echo, start_idgate, start_issuer, wait_ready, workdir,
)
from tests.harness.processes import HOST, ProcessGroup, ServerProcess, free_port

RULES = 100
LOOPS = ("asyncio", "uvloop")
REVERSE_PROXY_FLOOR = 0.5      # × the bare handler's req/s, on asyncio
FORWARD_AUTH_FLOOR = 0.7
ADDED_P50_LIMIT_US = 150.0     # idgate in front of the upstream vs the upstream alone, one connection


def _bare(name: str) -> str:
    return f"bare aiohttp ({name})"


def _reverse(name: str) -> str:
    return f"reverse proxy ({name})"


def _forward(name: str) -> str:
    return f"forward auth ({name})"


def _one_connection(name: str) -> str:
    return f"{name}, 1 connection"


def _workers(n: int) -> str:
    return f"reverse proxy --workers {n}"


UPSTREAM_ALONE = "upstream alone"
NO_FSYNC = "reverse proxy, audit fsync off (asyncio)"
WHY_UNPINNED = ("two worker processes cannot share one core: both --workers rows let idgate, their upstream and "
                "wrk use every core, so 2 vs 1 compares like with like (the --workers supervisor has known problems "
                "tracked in another issue)")


def _start_passthrough(procs: ProcessGroup, upstream_port: int) -> tuple[ServerProcess, int]:
    port = free_port()
    proc = procs.start("passthrough", [*SERVERS, "passthrough", str(port), str(upstream_port)])
    wait_ready(proc, f"http://{HOST}:{port}/")
    return proc, port


def _targets(procs: ProcessGroup, tmp: Path, cores: Cores, settings: WrkSettings,
             ) -> tuple[list[LoadTarget], dict[str, Idgate]]:
    """Start every server of the sitting (the ones under test pinned to the server core) and name what wrk
    measures; also the idgate of each loop, by loop."""
    upstream, upstream_port = start_echo(procs, "upstream")
    _, issuer_url = start_issuer(procs)
    token = mint_token(issuer_url)   # minted once: every request presents the same cached token
    auth = {"Host": PROXY_HOST, "Authorization": f"Bearer {token}"}
    check = {**auth, "X-Original-Method": "GET", "X-Original-URI": PROXY_PATH}
    one = dataclasses.replace(settings, connections=1)
    targets: list[LoadTarget] = []
    idgates: dict[str, Idgate] = {}
    for loop in LOOPS:
        bare, bare_port = start_echo(procs, f"bare-{loop}", loop)
        idgate = idgates[loop] = start_idgate(procs, tmp, issuer_url, upstream_port, name=f"idgate-{loop}",
                                              rules=RULES, loop=loop)
        for proc in (bare, idgate.proc):
            pin(proc.pid, cores.server)
        proxied = {"idgate": idgate.proc, "upstream": upstream}
        targets += [
            LoadTarget(_bare(loop), f"http://{HOST}:{bare_port}{PROXY_PATH}", {"Host": PROXY_HOST}, SMALL_BODY,
                       {"bare": bare}, settings),
            LoadTarget(_reverse(loop), idgate.url + PROXY_PATH, auth, SMALL_BODY, proxied, settings),
            LoadTarget(_forward(loop), idgate.url + "/.idgate/auth", check, None, {"idgate": idgate.proc}, settings),
            LoadTarget(_one_connection(_reverse(loop)), idgate.url + PROXY_PATH, auth, SMALL_BODY, proxied, one),
        ]
    # The same proxy with fsync off: what idgate's own code adds at one connection, without the disk's fsync.
    no_fsync = start_idgate(procs, tmp, issuer_url, upstream_port, name="idgate-no-fsync", rules=RULES,
                            loop="asyncio", audit={"fsync": False})
    pin(no_fsync.proc.pid, cores.server)
    targets.append(LoadTarget(_one_connection(NO_FSYNC), no_fsync.url + PROXY_PATH, auth, SMALL_BODY,
                              {"idgate": no_fsync.proc, "upstream": upstream}, one))
    passthrough, passthrough_port = _start_passthrough(procs, upstream_port)
    pin(passthrough.pid, cores.server)
    plain = {"Host": PROXY_HOST}
    targets += [
        LoadTarget("aiohttp passthrough (asyncio)", f"http://{HOST}:{passthrough_port}{PROXY_PATH}", plain, SMALL_BODY,
                   {"passthrough": passthrough, "upstream": upstream}, settings),
        LoadTarget(_one_connection(UPSTREAM_ALONE), f"http://{HOST}:{upstream_port}{PROXY_PATH}", plain, SMALL_BODY,
                   {"upstream": upstream}, one),
    ]
    # Two workers cannot share one core, so both rows run unpinned: the workers, their own upstream and wrk
    # may use every core (the ports are fixed, as the supervisor requires).
    spread_upstream, spread_port = start_echo(procs, "upstream-unpinned")
    pin(spread_upstream.pid, cores.every)
    spread = dataclasses.replace(settings, cores=cores.every)
    for n in (1, 2):
        idgate = start_idgate(procs, tmp, issuer_url, spread_port, name=f"idgate-workers-{n}", rules=RULES,
                              loop="asyncio", workers=n)
        pin(idgate.proc.pid, cores.every)
        targets.append(LoadTarget(_workers(n), idgate.url + PROXY_PATH, auth, SMALL_BODY,
                                  {"idgate": idgate.proc, "upstream": spread_upstream}, spread))
    return targets, idgates


def _judge(runs: Runs) -> dict[str, dict[str, Any]]:
    added, rounds = same_round_p50_difference_us(runs[_one_connection(_reverse("asyncio"))],
                                                 runs[_one_connection(UPSTREAM_ALONE)])
    added_uvloop, rounds_uvloop = same_round_p50_difference_us(runs[_one_connection(_reverse("uvloop"))],
                                                               runs[_one_connection(UPSTREAM_ALONE)])
    added_no_fsync, rounds_no_fsync = same_round_p50_difference_us(runs[_one_connection(NO_FSYNC)],
                                                                   runs[_one_connection(UPSTREAM_ALONE)])
    return {
        "reverse proxy": ratio_verdict(runs, _reverse("asyncio"), _bare("asyncio"),
                                       f"≥ {REVERSE_PROXY_FLOOR:.2f} × bare aiohttp req/s (asyncio)", REVERSE_PROXY_FLOOR),
        "forward auth": ratio_verdict(runs, _forward("asyncio"), _bare("asyncio"),
                                      f"≥ {FORWARD_AUTH_FLOOR:.2f} × bare aiohttp req/s (asyncio)", FORWARD_AUTH_FLOOR),
        "added latency, 1 connection": verdict(
            f"p50 < +{ADDED_P50_LIMIT_US:.0f} µs over the upstream alone",
            f"p50 +{added:.0f} µs (asyncio; uvloop +{added_uvloop:.0f} µs)", added,
            clean(runs[_one_connection(_reverse("asyncio"))]) and added < ADDED_P50_LIMIT_US, rounds),
        "added latency on uvloop, 1 connection": verdict(None, f"p50 +{added_uvloop:.0f} µs", added_uvloop, None,
                                                         rounds_uvloop),
        "added latency with audit fsync off, 1 connection": verdict(
            None, f"p50 +{added_no_fsync:.0f} µs (idgate's code; the rest is one fsync)", added_no_fsync, None,
            rounds_no_fsync),
        "reverse proxy on uvloop vs bare on uvloop": ratio_verdict(runs, _reverse("uvloop"), _bare("uvloop")),
        "reverse proxy on uvloop vs bare on asyncio": ratio_verdict(runs, _reverse("uvloop"), _bare("asyncio")),
        "forward auth on uvloop vs bare on asyncio": ratio_verdict(runs, _forward("uvloop"), _bare("asyncio")),
        "--workers 2 vs 1 (unpinned)": ratio_verdict(runs, _workers(2), _workers(1)),
    }


def run(options: LoadOptions) -> dict[str, Any]:
    cores = bench_cores()
    settings = options.settings
    with workdir("idgate-bench-") as tmp:
        procs = server_group(tmp)
        try:
            targets, idgates = _targets(procs, tmp, cores, settings)
            print(f"wrk -t{settings.threads} -c{settings.connections} (and -c1) -d{settings.duration}s --latency "
                  f"(+{settings.warmup}s warm-up), {options.rounds} interleaved round(s); server under test on "
                  f"core(s) {sorted(cores.server)}, wrk, upstream and issuer on {sorted(cores.load)}", flush=True)
            profiled = idgates["asyncio"].proc.pid
            done = sitting(targets, options, {_reverse("asyncio"): profiled, _forward("asyncio"): profiled})
            return done.result(
                "proxy", options,
                pinning={**cores.describe(), "unpinned_rows": [_workers(1), _workers(2)], "why_unpinned": WHY_UNPINNED},
                policy_rules=RULES, audit_fsync=True, loop_of_the_targets="asyncio",
                targets=_judge(done.runs), audit=audit_stats(idgates["asyncio"]))
        finally:
            procs.stop_all()


def main() -> int:
    options = load_options(__doc__)
    return measured_and_written("proxy", lambda: run(options))


if __name__ == "__main__":
    sys.exit(exit_code(main))
