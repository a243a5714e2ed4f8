"""Peak memory of idgate (one `idgate serve` process) under a flood of request heads that never finish,
while a legitimate client keeps being served: `--connections` connections at all times, each sending
headers of 16 KiB, 4 at a time, and never the blank line (a connection idgate closes is reopened at
once).  Run with the shipped limits and with the head cap lifted to what aiohttp's own parser would
allow, in the same sitting; idgate is pinned to one core and the flood and the client to the other.
Peak RSS is VmHWM from /proc/<pid>/status.  Writes bench/results/head_flood.json.

Run: .venv/bin/python -m bench.bench_head_flood [--quick] [--connections 500] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import aiohttp

from bench._sitting import bench_cores, machine, pin, stamped
from bench._stack import (
    HOST, PROXY_HOST, PROXY_PATH, exit_code, mint_token, proc_status_kib, server_group, sigterm_as_interrupt,
    start_echo, start_issuer, start_idgate, workdir, write_result,
)

TARGET_PEAK_MIB = 300
HEADER = b"X-Flood: " + b"f" * 16373 + b"\r\n"         # 16 KiB per header line: under every per-field limit
BURST = 4                                                # header lines per write
# What aiohttp's parser alone would accept: 200 fields of 32 KiB (idgate gives it 2x its own limits).
UNCAPPED = {"max_head_bytes": 200 * 32 * 1024, "max_connections": 4096, "max_connections_per_peer": 4096}


async def _flood_one(port: int, until: float, stats: dict[str, int]) -> None:
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            stats["connect_failed"] += 1
            continue
        stats["connections"] += 1
        try:
            writer.write(f"GET {PROXY_PATH} HTTP/1.1\r\nHost: {PROXY_HOST}\r\n".encode())
            while time.monotonic() < until and not reader.at_eof():
                writer.write(HEADER * BURST)
                await writer.drain()
                stats["bytes"] += len(HEADER) * BURST
                try:   # idgate's answer (431) and close, or keep pushing
                    if await asyncio.wait_for(reader.read(4096), 0.05):
                        stats["answered"] += 1
                        break
                except TimeoutError:
                    pass
        except (ConnectionError, OSError):
            stats["reset"] += 1
        finally:
            writer.close()


async def _legitimate(url: str, token: str, until: float) -> dict[str, Any]:
    latencies: list[float] = []
    failures = 0
    headers = {"Host": PROXY_HOST, "Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.monotonic() < until:
            started = time.perf_counter()
            try:
                async with session.get(url + PROXY_PATH, headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                failures += 1
    latencies.sort()
    return {"served": len(latencies), "failed": failures,
            "p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 2) if latencies else None}


async def _sitting(pid: int, url: str, token: str, connections: int, seconds: float) -> dict[str, Any]:
    quiet = await _legitimate(url, token, time.monotonic() + 2)
    stats = {"connections": 0, "bytes": 0, "answered": 0, "reset": 0, "connect_failed": 0}
    until = time.monotonic() + seconds
    floods = [asyncio.create_task(_flood_one(int(url.rsplit(":", 1)[1]), until, stats)) for _ in range(connections)]
    during = await _legitimate(url, token, until)
    await asyncio.gather(*floods)
    return {"quiet": quiet, "during_flood": during, "flood": stats,
            "peak_rss_mib": round(proc_status_kib(pid, "VmHWM") / 1024, 1),
            "rss_after_mib": round(proc_status_kib(pid, "VmRSS") / 1024, 1)}


def run(connections: int, seconds: float) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    cores = bench_cores()
    with workdir("idgate-bench-flood-") as tmp:
        procs = server_group(tmp)
        try:
            _, upstream_port = start_echo(procs, "upstream")
            _, issuer_url = start_issuer(procs)
            token = mint_token(issuer_url)
            for name, limits in (("shipped limits", None), ("head cap lifted", UNCAPPED)):
                idgate = start_idgate(procs, tmp, issuer_url, upstream_port, name=f"idgate-{len(rows)}", limits=limits)
                pin(idgate.proc.pid, cores.server)   # the flood and the client stay on the other core
                rows[name] = asyncio.run(_sitting(idgate.proc.pid, idgate.url, token, connections, seconds))
                procs.stop(idgate.proc)
        finally:
            procs.stop_all()
    shipped = rows["shipped limits"]
    met = shipped["peak_rss_mib"] < TARGET_PEAK_MIB and shipped["during_flood"]["served"] > 0
    return {"benchmark": "head_flood", "connections": connections, "seconds": seconds, "pinning": cores.describe(),
            "rows": rows, "target_peak_mib": TARGET_PEAK_MIB, "met": met,
            "targets": {f"head flood ({connections} connections)": {
                "target": f"peak RSS < {TARGET_PEAK_MIB} MiB, still serving",
                "measured": f"{shipped['peak_rss_mib']} MiB, {shipped['during_flood']['served']} served "
                            f"(cap lifted: {rows['head cap lifted']['peak_rss_mib']} MiB)",
                "met": met}}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 connections for 4 s")
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    connections, seconds = (200, 4.0) if args.quick else (args.connections, args.seconds)
    print(f"{connections} connections sending unfinished heads for {seconds:g} s, a legitimate client alongside:")
    at_start = machine()
    with sigterm_as_interrupt():
        result = stamped(run(connections, seconds), at_start)
    print(f"{'':18}{'peak RSS':>10}{'flood conns':>13}{'flood MiB':>11}{'served':>8}{'failed':>8}{'p50 ms':>8}"
          f"{'p99 ms':>8}{'quiet p50':>11}")
    for name, row in result["rows"].items():
        during, flood = row["during_flood"], row["flood"]
        print(f"{name:<18}{row['peak_rss_mib']:>9.1f}M{flood['connections']:>13}{flood['bytes'] / 2**20:>11.0f}"
              f"{during['served']:>8}{during['failed']:>8}{during['p50_ms'] or 0:>8}{during['p99_ms'] or 0:>8}"
              f"{row['quiet']['p50_ms'] or 0:>11}")
    print(f"target: peak RSS under {TARGET_PEAK_MIB} MiB with the shipped limits, legitimate requests served: "
          f"{'met' if result['met'] else 'NOT met'}")
    print(f"wrote {write_result('head_flood', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
