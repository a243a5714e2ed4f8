"""Issue 11's figures for audit shipping, in one sitting.  First the reverse proxy and the forward-auth
check with shipping off and on (CloudWatch Logs and S3 on a moto server, anchors every second, segments
rotated every 8 MiB so S3 uploads happen during the runs), and with both sinks down (nothing listening),
taking turns over rounds with wrk: the target is req/s with shipping on within 5 % of off, same round.  Then shipping throughput: a prewritten chain of
records shipped by a fresh idgate to moto, records per second until the CloudWatch checkpoint holds them
all.  idgate runs alone on one core; wrk, the upstream, the issuer and moto share the other.
Writes bench/results/shipping.json.

Run: .venv/bin/python -m bench.bench_shipping [--quick] [--rounds 3] [--duration 5] [--connections 32] [--no-profile]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench._servers import SMALL_BODY
from bench._sitting import Cores, LoadOptions, LoadTarget, bench_cores, load_options, pin, ratio_verdict, sitting
from bench._stack import (
    PROXY_HOST, PROXY_PATH, Idgate, exit_code, measured_and_written, mint_token, server_group, start_echo,
    start_idgate, start_issuer, workdir,
)
from tests.harness.moto import REGION, TEST_KEYS, MotoServer
from tests.harness.processes import ProcessGroup
from tests.harness.servers import refused_port
from tests.harness.shipping import BUCKET, LOG_GROUP, PREFIX, prewrite_chain, write_anchor_key

RULES = 100
SINKS_DOWN = "reverse proxy, shipping to sinks that are down"
WITHIN = 0.95                       # shipping on: at least this × the req/s with shipping off
GOAL = f"≥ {WITHIN:.2f} × the req/s with shipping off"
THROUGHPUT_RECORDS = 100_000


def _shipping_audit(endpoint: str, anchor_key: Path, rotate_bytes: int, instance: str, *,
                    s3: bool = True) -> dict[str, Any]:
    sinks: dict[str, Any] = {"cloudwatch": {"log_group": LOG_GROUP, "endpoint": endpoint}}
    if s3:
        sinks["s3"] = {"bucket": BUCKET, "prefix": PREFIX, "endpoint": endpoint}
    return {"rotate_bytes": rotate_bytes, "instance": instance,
            "shipping": {**sinks, "anchors": {"key_file": str(anchor_key), "interval": 1}}}


def _row(surface: str, shipping: bool) -> str:
    return f"{surface}, shipping {'on' if shipping else 'off'}"


def _targets(procs: ProcessGroup, tmp: Path, cores: Cores, options: LoadOptions, moto: MotoServer,
             anchor_key: Path, dead_port: int) -> tuple[list[LoadTarget], dict[str, Idgate]]:
    upstream, upstream_port = start_echo(procs, "upstream")
    _, issuer_url = start_issuer(procs)
    token = mint_token(issuer_url)
    auth = {"Host": PROXY_HOST, "Authorization": f"Bearer {token}"}
    check = {**auth, "X-Original-Method": "GET", "X-Original-URI": PROXY_PATH}
    targets: list[LoadTarget] = []
    idgates: dict[str, Idgate] = {}
    for shipping in (False, True):
        audit = _shipping_audit(moto.url, anchor_key, 8 << 20, "bench") if shipping else {"rotate_bytes": 8 << 20}
        name = f"idgate-shipping-{'on' if shipping else 'off'}"
        idgate = idgates[name] = start_idgate(procs, tmp, issuer_url, upstream_port, name=name, rules=RULES,
                                              audit=audit)
        pin(idgate.proc.pid, cores.server)
        targets += [
            LoadTarget(_row("reverse proxy", shipping), idgate.url + PROXY_PATH, auth, SMALL_BODY,
                       {"idgate": idgate.proc, "upstream": upstream, "moto": moto.process}, options.settings),
            LoadTarget(_row("forward auth", shipping), idgate.url + "/.idgate/auth", check, None,
                       {"idgate": idgate.proc, "moto": moto.process}, options.settings),
        ]
    # The sinks down (nothing listens at their endpoint): every shipment fails and backs off.
    down = idgates["idgate-sinks-down"] = start_idgate(
        procs, tmp, issuer_url, upstream_port, name="idgate-sinks-down", rules=RULES,
        audit=_shipping_audit(f"http://127.0.0.1:{dead_port}", anchor_key, 8 << 20, "down"))
    pin(down.proc.pid, cores.server)
    targets.append(LoadTarget(SINKS_DOWN, down.url + PROXY_PATH, auth, SMALL_BODY,
                              {"idgate": down.proc, "upstream": upstream}, options.settings))
    return targets, idgates


def _throughput(procs: ProcessGroup, tmp: Path, cores: Cores, moto: MotoServer, anchor_key: Path,
                count: int) -> dict[str, Any]:
    """A fresh idgate on a prewritten chain: how fast its shipper gets every record into CloudWatch."""
    name = "idgate-throughput"
    audit_path = tmp / name / "audit" / "audit.jsonl"
    prewrite_chain(audit_path, count, lambda i: {"event": "decision", "surface": "proxy", "decision": "allow",
                                                 "rule": "r", "request_id": f"{i:032x}",
                                                 "target": {"method": "GET", "host": PROXY_HOST, "path": PROXY_PATH}},
                   instance="throughput")
    _, issuer_url = start_issuer(procs)
    audit = _shipping_audit(moto.url, anchor_key, 1 << 30, "throughput", s3=False)
    started = time.monotonic()
    idgate = start_idgate(procs, tmp, issuer_url, 1, name=name, rules=RULES, audit=audit)
    pin(idgate.proc.pid, cores.server)
    checkpoint = audit_path.with_name("audit.jsonl.shipping") / "cloudwatch.json"
    shipped = 0
    while shipped < count:
        if time.monotonic() - started > 600:
            raise RuntimeError(f"shipping {count} records took over 600 s (at {shipped})")
        time.sleep(0.05)                  # polling the checkpoint another process writes
        try:
            shipped = json.loads(checkpoint.read_text())["position"]["seq"]
        except (FileNotFoundError, TypeError, KeyError, ValueError):
            continue
    elapsed = time.monotonic() - started
    result = {"records": count, "seconds": round(elapsed, 2), "records_per_s": round(count / elapsed),
              "note": "from `idgate serve` starting (a second or so) until the CloudWatch checkpoint holds every "
                      "record; moto (Werkzeug, one core shared with the load) takes every batch"}
    print(f"shipping throughput: {count} records in {elapsed:.1f} s = {count / elapsed:,.0f} records/s", flush=True)
    return result


def run(options: LoadOptions, quick: bool) -> dict[str, Any]:
    cores = bench_cores()
    os.environ.update({"AWS_ACCESS_KEY_ID": TEST_KEYS["aws_access_key_id"],
                       "AWS_SECRET_ACCESS_KEY": TEST_KEYS["aws_secret_access_key"], "AWS_DEFAULT_REGION": REGION})
    with workdir("idgate-bench-shipping-") as tmp, MotoServer() as moto, refused_port() as dead_port:
        pin(moto.process.pid, cores.load)
        moto.client("s3").create_bucket(Bucket=BUCKET)
        anchor_key = write_anchor_key(tmp)
        procs = server_group(tmp)
        try:
            targets, idgates = _targets(procs, tmp, cores, options, moto, anchor_key, dead_port)
            print(f"wrk -t{options.settings.threads} -c{options.settings.connections} -d{options.settings.duration}s, "
                  f"{options.rounds} interleaved round(s); idgate on core(s) {sorted(cores.server)}, wrk, upstream, "
                  f"issuer and moto on {sorted(cores.load)}", flush=True)
            profiled = {_row("reverse proxy", True): idgates["idgate-shipping-on"].proc.pid}
            done = sitting(targets, options, profiled)
            throughput = _throughput(procs, tmp, cores, moto, anchor_key, 20_000 if quick else THROUGHPUT_RECORDS)
            verdicts = {
                f"audit shipping on, {surface}": ratio_verdict(done.runs, _row(surface, True), _row(surface, False),
                                                               GOAL, WITHIN)
                for surface in ("reverse proxy", "forward auth")
            }
            verdicts["audit shipping, sinks down"] = ratio_verdict(done.runs, SINKS_DOWN, _row("reverse proxy", False),
                                                                   GOAL, WITHIN)
            return done.result("shipping", options, pinning=cores.describe(), policy_rules=RULES, audit_fsync=True,
                               targets=verdicts, throughput=throughput)
        finally:
            procs.stop_all()


def main() -> int:
    options = load_options(__doc__)
    return measured_and_written("shipping", lambda: run(options, options.settings.duration <= 2))


if __name__ == "__main__":
    sys.exit(exit_code(main))
