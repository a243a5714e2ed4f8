"""Issue 10's targets for the DynamoDB gateway, in one sitting.  First GetItem through idgate's gateway to
moto against GetItem straight to moto, taking turns over rounds: one call at a time (the added latency is
the gateway's p50 and p99 minus the direct call's in the same round) and 8 at a time (throughput).  idgate
runs alone on one core; moto (Werkzeug: the slow part) and the load generator (bench/_dynamodb_client.py,
signing every call with botocore) share the other.  Then the gateway's own cost per call without the
upstream, in-process on the server core, step by step (bench/_gateway_cost.py), with audit fsync on (the
target) and off (what durability costs), and a short py-spy run of each.  Writes bench/results/gateway.json.

Run: .venv/bin/python -m bench.bench_gateway [--quick] [--rounds 3] [--duration 5] [--concurrency 8]
     [--requests 2000] [--cost-rounds 5] [--no-profile]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from bench import _profile
from bench._dynamodb_client import connect, get_item_body, send, signed_headers
from bench._gateway import AUDIENCE, GATEWAY_PATH, ISSUER, tenant_token, write_config
from bench._sitting import (
    Cores, Runs, bench_cores, clean, machine, pin, print_run, ratio_verdict, same_round_difference_us,
    sitting, stamped, verdict, watched_run,
)
from bench._stack import (
    REPO, RESULTS, Idgate, exit_code, http_get, server_group, sigterm_as_interrupt, wait_ready, workdir,
    write_result,
)
from proxy.aws.credentials import AwsCredentials
from proxy.dev.issuer import DevIssuer
from tests.harness.broker import CREDENTIALS_PATH
from tests.harness.gateway import create_tables
from tests.harness.moto import TEST_KEYS, MotoServer
from tests.harness.processes import ProcessGroup, ServerProcess, free_port

CLIENT = (sys.executable, "-m", "bench._dynamodb_client")
COST = (sys.executable, "-m", "bench._gateway_cost")
COST_TARGET = "DynamoDB gateway's own cost per call"   # bench/run.py lists it among its TARGETS
ITEM = {"pk": {"S": "acme"}, "sk": {"S": "1"}, "status": {"S": "new"}, "amount": {"N": "5"}}
PINNING = ("idgate is the server under test, alone on its core; moto (the DynamoDB both rows call), the load "
           "generator and this script share the other.  moto is the bottleneck of every row (cpu_share), so the "
           "8-at-a-time rows compare what moto can serve with and without idgate in front; the added latency is "
           "idgate's own time on its core plus two more loopback hops.  moto (Werkzeug) answers every call with "
           "`Connection: close`, so the direct client reconnects for every call and idgate opens a new upstream "
           "connection for every call (against DynamoDB both would be reused).")


def _direct(concurrency: int) -> str:
    return f"GetItem direct to moto, {concurrency} at a time"


def _through(concurrency: int) -> str:
    return f"GetItem through the gateway, {concurrency} at a time"


@dataclass(frozen=True)
class Options:
    rounds: int
    duration: int
    warmup: int
    concurrency: int
    requests: int          # the cost benchmark's calls per step per round
    cost_rounds: int
    profile_seconds: int   # 0: no profiles


def options() -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round of 2 s runs, short cost rounds (a smoke check)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=int, default=None, help="seconds per run (default 5)")
    parser.add_argument("--concurrency", type=int, default=8, help="calls at a time in the throughput rows")
    parser.add_argument("--requests", type=int, default=None, help="cost benchmark: calls per round (default 2000)")
    parser.add_argument("--cost-rounds", type=int, default=None, help="cost benchmark: rounds (default 5)")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy runs")
    args = parser.parse_args()
    quick = args.quick
    return Options(rounds=args.rounds or (1 if quick else 3), duration=args.duration or (2 if quick else 5),
                   warmup=1, concurrency=args.concurrency, requests=args.requests or (300 if quick else 2000),
                   cost_rounds=args.cost_rounds or (2 if quick else 5),
                   profile_seconds=0 if args.no_profile else (2 if quick else 5))


# -- the sitting: through the gateway and direct, in turns ------------------------------------------


class _Client:
    """The load generator with one job, warmed up (bench/_dynamodb_client.py's protocol)."""

    def __init__(self, job: dict[str, Any]) -> None:
        self._process = subprocess.Popen(CLIENT, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._say(json.dumps(job))
        if self._hear() != "warm":
            raise RuntimeError("the load generator did not warm up")

    def _say(self, line: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()

    def _hear(self) -> str:
        assert self._process.stdout is not None
        return self._process.stdout.readline().strip()

    def measure(self) -> dict[str, Any]:
        self._say("go")
        result: dict[str, Any] = json.loads(self._hear())
        return result

    def __enter__(self) -> _Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        try:
            self._process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@dataclass(frozen=True)
class ClientTarget:
    """What one load-generator run measures: GetItems to `url` signed with `credentials`, `concurrency` at a
    time; the CPU of the watched processes (the first is the server under test)."""

    name: str
    url: str
    credentials: AwsCredentials
    watched: dict[str, ServerProcess]
    concurrency: int
    duration: int
    warmup: int

    @property
    def server_under_test(self) -> str:
        return next(iter(self.watched))

    def job(self, seconds: int, warmup: int) -> dict[str, Any]:
        c = self.credentials
        return {"url": self.url, "seconds": seconds, "warmup": warmup, "concurrency": self.concurrency,
                "credentials": {"access_key_id": c.access_key_id, "secret_access_key": c.secret_access_key,
                                "session_token": c.session_token}}

    def check(self) -> None:
        """One call before the load: a refusal must not be measured as speed."""
        body = get_item_body()
        connection = connect(self.url)
        try:
            status, got = send(connection, self.url, body, signed_headers(self.url, body, self.credentials))
        finally:
            connection.close()
        if status != 200 or b'"Item"' not in got:
            raise RuntimeError(f"{self.name}: expected 200 with the item, got HTTP {status}: {got[:300]!r}")

    def measure(self, round_no: int) -> dict[str, Any]:
        with _Client(self.job(self.duration, self.warmup)) as client:
            result = watched_run(self.watched, client.measure)
        print_run(round_no, self.name, result)
        return result

    def profile(self, pid: int, seconds: int) -> dict[str, Any]:
        def load(duration: int) -> None:
            with _Client(self.job(duration, 0)) as client:
                client.measure()
        return _profile.profiled(pid, self.name, seconds, load, RESULTS / "profiles")


def _start_idgate(procs: ProcessGroup, home: Path, moto_url: str, issuer: DevIssuer) -> Idgate:
    port, admin_port = free_port(), free_port()
    config = write_config(home, issuer, endpoint=moto_url, sts_endpoint=moto_url, port=port, admin_port=admin_port)
    proc = procs.start("idgate", [sys.executable, "-m", "proxy", "serve", "--config", str(config),
                                  "--log-level", "warning"])
    idgate = Idgate(proc, port, admin_port, home / "audit" / "audit.jsonl")
    wait_ready(proc, idgate.admin_url + "/readyz")
    return idgate


def _vend(idgate: Idgate, token: str) -> AwsCredentials:
    """Gateway credentials from the credentials endpoint, as botocore's container provider gets them."""
    status, body = http_get(idgate.url + CREDENTIALS_PATH, {"Authorization": token})
    if status != 200:
        raise RuntimeError(f"the credentials endpoint answered HTTP {status}: {body[:300]!r}")
    got = json.loads(body)
    return AwsCredentials(got["AccessKeyId"], got["SecretAccessKey"], got["Token"], time.time() + 3600)


def _targets(procs: ProcessGroup, home: Path, cores: Cores, options: Options, moto: MotoServer,
             ) -> tuple[list[ClientTarget], Idgate]:
    """moto's tenant role, tables and item, idgate in front of it, and the rows that take turns."""
    moto.create_role("tenant")
    create_tables(moto)
    moto.client("dynamodb").put_item(TableName="orders", Item=ITEM)
    issuer = DevIssuer(ISSUER, AUDIENCE)
    idgate = _start_idgate(procs, home, moto.url, issuer)
    pin(idgate.proc.pid, cores.server)
    gateway_credentials = _vend(idgate, tenant_token(issuer))
    moto_credentials = AwsCredentials(TEST_KEYS["aws_access_key_id"], TEST_KEYS["aws_secret_access_key"], "",
                                      time.time() + 3600)
    targets = []
    for concurrency in (1, options.concurrency):
        targets += [
            ClientTarget(_direct(concurrency), moto.url + "/", moto_credentials, {"moto": moto.process},
                         concurrency, options.duration, options.warmup),
            ClientTarget(_through(concurrency), idgate.url + GATEWAY_PATH, gateway_credentials,
                         {"idgate": idgate.proc, "moto": moto.process}, concurrency, options.duration, options.warmup),
        ]
    return targets, idgate


def _added(runs: Runs) -> dict[str, Any]:
    """The gateway's latency minus the direct call's, one call at a time, in the same round."""
    through, direct = runs[_through(1)], runs[_direct(1)]
    p50, rounds_p50 = same_round_difference_us(through, direct, "p50_ms")
    p99, rounds_p99 = same_round_difference_us(through, direct, "p99_ms")
    return {"p50_us": p50, "p99_us": p99, "rounds_p50_us": rounds_p50, "rounds_p99_us": rounds_p99,
            "clean": clean(through, direct)}


# -- the gateway's own cost, in-process ---------------------------------------------------------------


def _cost(cores: Cores, options: Options, *args: str) -> dict[str, Any]:
    """bench/_gateway_cost.py on the server core (its only work there): its JSON."""
    command = [*COST, "--core", str(min(cores.server)), "--rounds", str(options.cost_rounds),
               "--requests", str(options.requests), *args]
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True, check=True, timeout=600)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _cost_profile(cores: Cores, options: Options, name: str, *args: str) -> dict[str, Any]:
    """py-spy on the cost benchmark while it makes whole calls, apart from the measured rounds."""
    seconds = options.profile_seconds
    if not seconds:
        return {"skipped": "--no-profile"}
    command = [*COST, "--core", str(min(cores.server)), "--requests", str(options.requests),
               "--profile-seconds", str(seconds), *args]
    with subprocess.Popen(command, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdin is not None and child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the cost benchmark did not get ready to be profiled")

        def load(_duration: int) -> None:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
            child.wait(timeout=seconds + 60)

        return _profile.profiled(child.pid, name, seconds, load, RESULTS / "profiles")


# -- the sitting --------------------------------------------------------------------------------------


def run(options: Options) -> dict[str, Any]:
    cores = bench_cores()
    # idgate's own (base) credentials for STS; moto accepts any.  Never a worker's credentials.
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    with workdir("idgate-bench-gateway-") as home:
        procs = server_group(home)
        moto = MotoServer()
        try:
            moto.start()
            pin(moto.process.pid, cores.load)
            targets, idgate = _targets(procs, home, cores, options, moto)
            print(f"load generator: {options.duration} s runs after {options.warmup} s warm-up, {options.rounds} "
                  f"interleaved round(s); idgate on core(s) {sorted(cores.server)}, moto and the load generator on "
                  f"{sorted(cores.load)}", flush=True)
            done = sitting(targets, options, {_through(options.concurrency): idgate.proc.pid})
        finally:
            procs.stop_all()
            moto.stop()
    print(f"the gateway's own cost, in-process on core {min(cores.server)}: {options.cost_rounds} round(s) of "
          f"{options.requests} calls, audit fsync on, then off", flush=True)
    cost = _cost(cores, options)
    cost_no_fsync = _cost(cores, options, "--no-fsync")
    profiles = {**done.profiles,
                "in-process whole call": _cost_profile(cores, options, "gateway in-process whole call"),
                "in-process whole call, fsync off": _cost_profile(cores, options, "gateway in-process, fsync off",
                                                                  "--no-fsync")}
    added = _added(done.runs)
    return {
        "benchmark": "gateway",
        "load_generator": (f"bench/_dynamodb_client.py: GetItem signed per call with botocore, {options.duration} s "
                           f"runs after {options.warmup} s warm-up, medians of {options.rounds} interleaved round(s)"),
        "pinning": {**cores.describe(), "note": PINNING},
        "rows": done.rows,
        "cpu_us_per_request": {name: row["cpu_us_per_request"][row["server_under_test"]]
                               for name, row in done.rows.items()},
        "added_latency": added,
        "cost": cost,
        "cost_fsync_off": cost_no_fsync,
        "targets": _judge(done.runs, added, cost, cost_no_fsync, options.concurrency),
        "profiles": profiles,
    }


def _judge(runs: Runs, added: dict[str, Any], cost: dict[str, Any], cost_no_fsync: dict[str, Any],
           concurrency: int) -> dict[str, dict[str, Any]]:
    whole, whole_no_fsync = cost["whole"], cost_no_fsync["whole"]
    return {
        COST_TARGET: verdict(
            f"p50 < {cost['target_us']:.0f} µs on one core (in-process, no upstream)",
            f"p50 {whole['process_cpu_p50_us']:.0f} µs CPU (wall {whole['wall_p50_us']:.0f} µs with the decision "
            f"record's fsync)", whole["process_cpu_p50_us"], cost["met"], whole["rounds_process_cpu_p50_us"]),
        f"{COST_TARGET}, audit fsync off": verdict(
            None, f"p50 {whole_no_fsync['process_cpu_p50_us']:.0f} µs CPU", whole_no_fsync["process_cpu_p50_us"],
            None, whole_no_fsync["rounds_process_cpu_p50_us"]),
        "DynamoDB gateway added latency, 1 at a time": verdict(
            None, f"p50 +{added['p50_us']:.0f} µs, p99 +{added['p99_us']:.0f} µs over GetItem direct to moto",
            added["p50_us"], None, added["rounds_p50_us"]),
        f"DynamoDB gateway throughput, {concurrency} at a time": ratio_verdict(runs, _through(concurrency),
                                                                               _direct(concurrency)),
    }


def report(result: dict[str, Any]) -> None:
    rows = result["rows"]
    print(f"\n{result['load_generator']}; load average {result['loadavg']['start']} at start, "
          f"{result['loadavg']['end']} at end")
    print(f"{'':<44}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'idgate µs/call':>16}{'moto µs/call':>14}")
    for name, row in rows.items():
        cpu = row["cpu_us_per_request"]
        print(f"{name:<44}{row['requests_per_s']:>8.0f}{row['p50_ms']:>9.3f}{row['p99_ms']:>9.3f}"
              f"{cpu.get('idgate') or '-':>16}{cpu.get('moto') or '-':>14}"
              + (f"  !! {row['non_2xx']} non-2xx" if row["non_2xx"] else ""))
    added = result["added_latency"]
    print(f"added latency, 1 at a time (same-round differences): p50 +{added['p50_us']:.0f} µs "
          f"{added['rounds_p50_us']}, p99 +{added['p99_us']:.0f} µs {added['rounds_p99_us']}")
    for key, label in (("cost", "audit fsync on"), ("cost_fsync_off", "audit fsync off")):
        cost = result[key]
        whole = cost["whole"]
        print(f"\nthe gateway's own cost per GetItem, in-process on core {cost['core']}, {label} "
              f"({cost['rounds']} rounds of {cost['requests_per_round']} calls; µs; this core runs sum(range(1000)) "
              f"in {cost['calibration_us']} µs)")
        print(f"{'':<46}{'wall p50':>9}{'wall p99':>9}{'CPU p50':>9}{'CPU p99':>9}")
        for name, step in cost["steps"].items():
            print(f"  {name:<44}{step['wall_p50_us']:>9.1f}{step['wall_p99_us']:>9.1f}{step['cpu_p50_us']:>9.1f}"
                  f"{step['cpu_p99_us']:>9.1f}")
            for part, figures in step.get("parts", {}).items():
                print(f"    {part:<42}{figures['wall_p50_us']:>9.1f}{figures['wall_p99_us']:>9.1f}"
                      f"{figures['cpu_p50_us']:>9.1f}{figures['cpu_p99_us']:>9.1f}")
        total = cost["stepwise_total"]
        print(f"  {'the steps, called one by one':<44}{total['wall_p50_us']:>9.1f}{total['wall_p99_us']:>9.1f}"
              f"{total['cpu_p50_us']:>9.1f}{total['cpu_p99_us']:>9.1f}")
        print(f"  {'the whole call (event loop thread)':<44}{whole['wall_p50_us']:>9.1f}{whole['wall_p99_us']:>9.1f}"
              f"{whole['cpu_p50_us']:>9.1f}{whole['cpu_p99_us']:>9.1f}")
        print(f"  {'the whole call (process: + audit thread)':<44}{'':>18}{whole['process_cpu_p50_us']:>9.1f}"
              f"{whole['process_cpu_p99_us']:>9.1f}   rounds {whole['rounds_process_cpu_p50_us']}")
    for name, profile in result["profiles"].items():
        if "top_idgate_inclusive" in profile:
            print(f"profile, {name}: " + "; ".join(f"{e['share']:.0%} {e['frame']}"
                                                   for e in profile["top_idgate_inclusive"]))
    targets = result["targets"]
    widths = [max(len(heading), *(len(cell) for cell in cells)) + 2 for heading, cells in (
        ("target", list(targets)), ("goal", [v["target"] for v in targets.values()]),
        ("measured", [v["measured"] for v in targets.values()]))]
    print("\n" + "".join(f"{h:<{w}}" for h, w in zip(("target", "goal", "measured"), widths)) + "verdict")
    for name, v in targets.items():
        mark = "-" if v["met"] is None else "pass" if v["met"] else "MISS"
        print("".join(f"{cell:<{w}}" for cell, w in zip((name, v["target"], v["measured"]), widths)) + mark)


def main() -> int:
    chosen = options()
    at_start = machine()
    with sigterm_as_interrupt():
        result = stamped(run(chosen), at_start)
    report(result)
    print(f"wrote {write_result('gateway', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
