"""Micro-benchmark of TokenVerifier.verify(): cold (first verification of a fresh token: parse, checks,
ES256 signature) and warm (verified-token cache hit), in-process; writes bench/results/jwt.json.

Run: .venv/bin/python -m bench.bench_jwt [--quick] [--cold 2000] [--warm 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import aiohttp
from aiohttp import web

from bench._stack import AUDIENCE, exit_code, write_result
from proxy.config import IssuerConfig
from proxy.dev.issuer import DEMO_IDENTITIES, DevIssuer
from proxy.metrics import Metrics
from proxy.oidc import TokenVerifier
from tests.harness.processes import HOST, free_port

WARM_TARGET_US = 20.0


def summary(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0, 2)

    return {"median_us": at(0.5), "p90_us": at(0.9), "p99_us": at(0.99), "max_us": round(ordered[-1] / 1000.0, 1),
            "mean_us": round(statistics.fmean(ordered) / 1000.0, 2), "calls": len(ordered)}


async def measure(cold: int, warm: int) -> dict[str, Any]:
    port = free_port()
    issuer = DevIssuer(f"http://{HOST}:{port}", AUDIENCE)
    runner = web.AppRunner(issuer.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    try:
        async with aiohttp.ClientSession() as session:
            config = IssuerConfig(issuer=issuer.issuer_url, audiences=(AUDIENCE,), require_typ="at+jwt")
            verifier = TokenVerifier([config], session, Metrics(), cache_size=cold + 10)
            await verifier.start()  # keys fetched once, as at startup: cold means a fresh token, not a fresh key
            try:
                identity = DEMO_IDENTITIES["svc-etl-7"]
                tokens = [issuer.mint(identity) for _ in range(cold + 1)]
                clock = time.perf_counter_ns
                await verifier.verify(tokens[-1])  # the first call pays one-time imports and allocations
                cold_ns = []
                for token in tokens[:cold]:
                    start = clock()
                    await verifier.verify(token)
                    cold_ns.append(clock() - start)
                token = tokens[0]
                warm_ns = []
                for _ in range(warm):
                    start = clock()
                    await verifier.verify(token)
                    warm_ns.append(clock() - start)
            finally:
                await verifier.close()
    finally:
        await runner.cleanup()
    warm_summary = summary(warm_ns)
    return {
        "benchmark": "jwt",
        "algorithm": "ES256",
        "token_bytes": len(tokens[0]),
        "cold": summary(cold_ns),
        "warm": warm_summary,
        "warm_target_us": WARM_TARGET_US,
        "warm_meets_target": warm_summary["p99_us"] < WARM_TARGET_US,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer calls")
    parser.add_argument("--cold", type=int, default=None, help="fresh tokens to verify (default 2000)")
    parser.add_argument("--warm", type=int, default=None, help="cache hits to time (default 200000)")
    args = parser.parse_args()
    cold = args.cold or (300 if args.quick else 2000)
    warm = args.warm or (30_000 if args.quick else 200_000)
    result = asyncio.run(measure(cold, warm))
    print(f"{'TokenVerifier.verify':<26}{'median µs':>11}{'p90 µs':>9}{'p99 µs':>9}{'max µs':>9}{'calls':>9}")
    for name in ("cold", "warm"):
        row = result[name]
        print(f"  {name:<24}{row['median_us']:>11.2f}{row['p90_us']:>9.2f}{row['p99_us']:>9.2f}"
              f"{row['max_us']:>9.1f}{row['calls']:>9}")
    print(f"warm-cache check p99 {result['warm']['p99_us']:.2f} µs (target < {WARM_TARGET_US:.0f} µs): "
          f"{'met' if result['warm_meets_target'] else 'MISSED'}")
    path = write_result("jwt", result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
