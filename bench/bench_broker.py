"""Credential broker benchmark: vend latency on a cache hit against a forward-auth check of the same idgate
(target: within 1.2×), and STS calls when 1,000 callers with one identity ask at once (target: exactly 1)
and when 100 distinct identities do (target: 100).  Writes bench/results/broker.json.

idgate runs as `idgate serve` (one process, audit fsync on) with 100 generated HTTP rules plus the broker
rule; moto_server plays STS.  STS calls are read from idgate's own counter (idgate_sts_calls_total).

Run: .venv/bin/python -m bench.bench_broker [--quick] [--connections 32] [--duration 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench._stack import (
    AUDIENCE, PROXY_HOST, PROXY_PATH, Idgate, WrkSettings, exit_code, http_get, metric_values, run_wrk,
    server_group, sigterm_as_interrupt, wait_ready, warm_up, workdir, write_policies, write_result,
)
from proxy.dev.issuer import DemoIdentity, DevIssuer
from tests.harness.processes import HOST, ProcessGroup, free_port

ISSUER = "https://bench-issuer.invalid"          # tokens are minted here; idgate reads the key from a file
CREDENTIALS_PATH = "/.idgate/credentials"
SAME_IDENTITY_CALLERS, DISTINCT_IDENTITIES = 1000, 100
RATIO_TARGET = 1.2
BROKER_RULE = {
    "id": "bench-orders-table",
    "who": {"issuer": ISSUER, "subject": ["svc-etl-*"], "claims": {"tenant": "acme"}},
    "aws": {"role_arn": "arn:aws:iam::123456789012:role/etl",
            "dynamodb": [{"table": "orders", "actions": ["GetItem", "Query", "PutItem", "UpdateItem"],
                          "leading_keys": ["${claims.tenant}"], "attributes": ["pk", "sk", "status", "amount"]}]},
}


@dataclass
class Stack:
    idgate: Idgate
    issuer: DevIssuer

    def token(self, subject: str = "svc-etl-7") -> str:
        return self.issuer.mint(DemoIdentity(subject, ("data-eng",), {"tenant": "acme"}), lifetime=3600)

    def sts_calls(self) -> float:
        values = metric_values(self.idgate.admin_url)
        return sum(v for k, v in values.items() if k.startswith("idgate_sts_calls_total{"))


def start_moto(procs: ProcessGroup) -> str:
    moto = Path(sys.executable).parent / "moto_server"
    port = free_port()
    proc = procs.start("moto", [str(moto), "-H", HOST, "-p", str(port)])
    wait_ready(proc, f"http://{HOST}:{port}/moto-api/data.json")
    return f"http://{HOST}:{port}"


def start_broker_idgate(procs: ProcessGroup, home: Path, moto_url: str, issuer: DevIssuer) -> Idgate:
    policies = home / "policies"
    write_policies(policies, ISSUER, 100)
    (policies / "broker.yaml").write_text(yaml.safe_dump({"rules": [BROKER_RULE]}, sort_keys=False))
    jwks = home / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    port, admin_port = free_port(), free_port()
    audit_path = home / "audit" / "audit.jsonl"
    config = {
        "listen": {"host": HOST, "port": port},
        "admin": {"host": HOST, "port": admin_port},
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "require_typ": "at+jwt", "jwks_file": str(jwks)}],
        "policies_dir": str(policies),
        "trusted_proxies": [f"{HOST}/32"],
        "credentials": {"enabled": True, "path": CREDENTIALS_PATH},
        "aws": {"region": "us-east-1", "sts_endpoint": moto_url},
        "audit": {"path": str(audit_path), "fsync": True},
    }
    config_path = home / "idgate.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = procs.start("idgate", [sys.executable, "-m", "proxy", "serve", "--config", str(config_path),
                                  "--log-level", "warning"])
    idgate = Idgate(proc, port, admin_port, audit_path)
    wait_ready(proc, idgate.admin_url + "/readyz")
    return idgate


def latency(stack: Stack, settings: WrkSettings, rounds: int) -> dict[str, Any]:
    """wrk against both endpoints with the same settings, interleaved for `rounds` rounds so drift in
    machine load hits both alike; each row is the median round (by p50)."""
    token = stack.token()
    targets = {
        "forward auth": (f"{stack.idgate.url}/.idgate/auth",
                         {"Authorization": f"Bearer {token}", "X-Original-Method": "GET",
                          "X-Original-URI": PROXY_PATH, "X-Forwarded-Host": PROXY_HOST}),
        "vend (cache hit)": (f"{stack.idgate.url}{CREDENTIALS_PATH}", {"Authorization": token}),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for name, (url, headers) in targets.items():
        status, body = http_get(url, headers)
        if status != 200:
            raise RuntimeError(f"{name}: expected 200, got {status}: {body[:200]!r}")
        warm_up(url, headers, settings)
    for _ in range(rounds):
        for name, (url, headers) in targets.items():
            runs[name].append(run_wrk(url, headers, settings).as_dict())
    results = {}
    for name, rows in runs.items():
        rows.sort(key=lambda row: row["p50_ms"])
        results[name] = {**rows[len(rows) // 2], "rounds_p50_ms": [row["p50_ms"] for row in rows]}
    return results


async def _burst(url: str, tokens: list[str]) -> tuple[list[int], list[float]]:
    """Every token's GET sent at once (one connection each); statuses and seconds to the answer."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        start = asyncio.Event()

        async def one(token: str) -> tuple[int, float]:
            await start.wait()
            began = time.perf_counter()
            async with http.get(url, headers={"Authorization": token}) as response:
                await response.read()
                return response.status, time.perf_counter() - began

        tasks = [asyncio.create_task(one(t)) for t in tokens]
        await asyncio.sleep(0)      # every task is parked on the event: release them together
        start.set()
        done = await asyncio.gather(*tasks)
    return [s for s, _ in done], [t for _, t in done]


def burst(stack: Stack, subjects: list[str]) -> dict[str, Any]:
    tokens = [stack.token(subject) for subject in subjects]
    before = stack.sts_calls()
    statuses, seconds = asyncio.run(_burst(stack.idgate.url + CREDENTIALS_PATH, tokens))
    calls = stack.sts_calls() - before
    seconds.sort()
    return {
        "callers": len(tokens), "identities": len(set(subjects)), "sts_calls": int(calls),
        "ok": statuses.count(200), "statuses": sorted(set(statuses)),
        "p50_ms": round(statistics.median(seconds) * 1000, 2),
        "max_ms": round(seconds[-1] * 1000, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s per endpoint instead of 3 of 3 s")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=None, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved runs per endpoint")
    args = parser.parse_args()
    duration = args.duration or (2 if args.quick else 3)
    rounds = args.rounds or (1 if args.quick else 3)
    # idgate's own (base) credentials for STS; moto accepts any.  Never a worker's credentials.
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    issuer = DevIssuer(ISSUER, AUDIENCE)
    results: dict[str, Any] = {}
    with sigterm_as_interrupt(), workdir("idgate-bench-broker-") as home:
        procs = server_group(home)
        try:
            stack = Stack(start_broker_idgate(procs, home, start_moto(procs), issuer), issuer)
            for connections in (1, args.connections):
                settings = WrkSettings(threads=1, connections=connections, duration=duration, warmup=1)
                results[f"latency_c{connections}"] = latency(stack, settings, rounds)
            results["same_identity"] = burst(stack, ["svc-etl-burst"] * SAME_IDENTITY_CALLERS)
            results["distinct_identities"] = burst(stack, [f"svc-etl-d{i:03d}" for i in range(DISTINCT_IDENTITIES)])
        finally:
            procs.stop_all()
    report(results, args.connections)
    path = write_result("broker", {"targets": {"vend_vs_forward_auth_p50": f"<= {RATIO_TARGET}",
                                               "same_identity_sts_calls": 1,
                                               "distinct_identities_sts_calls": DISTINCT_IDENTITIES},
                                   **results})
    print(f"\nwrote {path}")
    return 0


def report(results: dict[str, Any], connections: int) -> None:
    print(f"{'case':34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs forward auth (p50)':>22}")
    for key in ("latency_c1", f"latency_c{connections}"):
        rows = results[key]
        base = rows["forward auth"]["p50_ms"]
        for name, row in rows.items():
            ratio = row["p50_ms"] / base if base else float("nan")
            verdict = "" if name == "forward auth" else f"{ratio:.2f}x {'ok' if ratio <= RATIO_TARGET else 'MISSED'}"
            print(f"{name + f' (c={key[9:]})':34} {row['requests_per_s']:9.0f} {row['p50_ms']:8.3f} "
                  f"{row['p99_ms']:8.3f} {verdict:>22}")
    print()
    for key, target in (("same_identity", 1), ("distinct_identities", DISTINCT_IDENTITIES)):
        row = results[key]
        verdict = "ok" if row["sts_calls"] == target and row["ok"] == row["callers"] else "MISSED"
        print(f"{row['callers']:5} callers, {row['identities']:4} identities: {row['sts_calls']:4} STS call(s) "
              f"(target {target}) {verdict}; {row['ok']} × 200, p50 {row['p50_ms']} ms, max {row['max_ms']} ms")


if __name__ == "__main__":
    sys.exit(exit_code(main))
