"""Peak memory of idgate (one `idgate serve` process) while streaming a large body through the reverse
proxy, upload and download, at a small and a large size: flat means the peak does not grow with the
body.  Peak RSS is VmHWM from /proc/<pid>/status, reset before each transfer; writes
bench/results/stream_memory.json.

Run: .venv/bin/python -m bench.bench_stream_memory [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from bench._stack import (
    STREAM_HOST, exit_code, mint_token, proc_status_kib, reset_peak_rss, server_group, sigterm_as_interrupt,
    start_echo, start_idgate, start_issuer, workdir, write_result,
)

MIB = 1024 * 1024
CLIENT_CHUNK = MIB
# Allowed growth of idgate's peak RSS from the small to the large body: a buffered body would add
# (large - small) bytes, i.e. 960 MiB in the full run.
FLAT_ALLOWANCE_MIB = 16


async def _body(size: int) -> AsyncIterator[bytes]:
    chunk = b"u" * CLIENT_CHUNK
    sent = 0
    while sent < size:
        part = chunk if size - sent >= CLIENT_CHUNK else chunk[: size - sent]
        yield part
        sent += len(part)


async def _upload(session: aiohttp.ClientSession, url: str, headers: dict[str, str], size: int) -> int:
    async with session.post(f"{url}/upload", data=_body(size),
                            headers={**headers, "Content-Length": str(size)}) as response:
        if response.status != 200:
            raise RuntimeError(f"upload of {size} bytes: HTTP {response.status}: {(await response.read())[:200]!r}")
        answer: dict[str, Any] = await response.json()
        return int(answer["body_bytes"])


async def _download(session: aiohttp.ClientSession, url: str, headers: dict[str, str], size: int) -> int:
    async with session.get(f"{url}/__big?bytes={size}", headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"download of {size} bytes: HTTP {response.status}")
        received = 0
        async for chunk in response.content.iter_chunked(CLIENT_CHUNK):
            received += len(chunk)
        return received


async def _transfers(pid: int, url: str, token: str, sizes: list[int]) -> tuple[list[dict[str, Any]], bool]:
    headers = {"Host": STREAM_HOST, "Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=300)
    rows: list[dict[str, Any]] = []
    reset_works = True
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        # Warm-up: first-use allocations (imports, buffers, pools) are not what this measures.
        for _ in range(3):
            await _upload(session, url, headers, 4 * MIB)
            await _download(session, url, headers, 4 * MIB)
        for size in sizes:
            for direction, transfer in (("upload", _upload), ("download", _download)):
                reset_works = reset_peak_rss(pid) and reset_works
                rss_before = proc_status_kib(pid, "VmRSS")
                started = time.monotonic()
                moved = await transfer(session, url, headers, size)
                seconds = time.monotonic() - started
                if moved != size:
                    raise RuntimeError(f"{direction} of {size} bytes delivered {moved}")
                peak = proc_status_kib(pid, "VmHWM")
                rows.append({"direction": direction, "bytes": size, "rss_before_mib": round(rss_before / 1024, 1),
                             "peak_rss_mib": round(peak / 1024, 1), "seconds": round(seconds, 2),
                             "mib_per_s": round(size / MIB / seconds, 1)})
                print(f"  {direction:<9}{size // MIB:>6} MiB  idgate RSS before {rss_before / 1024:7.1f} MiB  "
                      f"peak {peak / 1024:7.1f} MiB  {size / MIB / seconds:7.1f} MiB/s", flush=True)
    return rows, reset_works


def run(sizes: list[int]) -> dict[str, Any]:
    with workdir("idgate-bench-stream-") as tmp:
        procs = server_group(tmp)
        try:
            _, upstream_port = start_echo(procs, "upstream")
            _, issuer_url = start_issuer(procs)
            idgate = start_idgate(procs, tmp, issuer_url, upstream_port, name="idgate-stream")
            token = mint_token(issuer_url)
            pid = idgate.proc.pid
            idle = proc_status_kib(pid, "VmRSS")
            rows, reset_works = asyncio.run(_transfers(pid, idgate.url, token, sizes))
        finally:
            procs.stop_all()
    small, large = min(sizes), max(sizes)
    peak_small = max(r["peak_rss_mib"] for r in rows if r["bytes"] == small)
    peak_large = max(r["peak_rss_mib"] for r in rows if r["bytes"] == large)
    growth = round(peak_large - peak_small, 1)
    return {
        "benchmark": "stream_memory",
        "idle_rss_mib": round(idle / 1024, 1),
        "peak_reset_per_transfer": reset_works,  # False: VmHWM is monotonic, so later rows include earlier peaks
        "transfers": rows,
        "small_bytes": small,
        "large_bytes": large,
        "peak_small_mib": peak_small,
        "peak_large_mib": peak_large,
        "growth_mib": growth,
        "flat_allowance_mib": FLAT_ALLOWANCE_MIB,
        "flat": growth < FLAT_ALLOWANCE_MIB,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="16 MiB vs 256 MiB instead of 64 MiB vs 1 GiB")
    args = parser.parse_args()
    sizes = [16 * MIB, 256 * MIB] if args.quick else [64 * MIB, 1024 * MIB]
    print("streaming through idgate's reverse proxy (audit on, fsync true); idgate's peak RSS per transfer:")
    with sigterm_as_interrupt():
        result = run(sizes)
    print(f"peak RSS {result['peak_small_mib']} MiB at {result['small_bytes'] // MIB} MiB vs "
          f"{result['peak_large_mib']} MiB at {result['large_bytes'] // MIB} MiB: growth {result['growth_mib']} MiB "
          f"({'flat' if result['flat'] else 'GROWS'}, allowance {FLAT_ALLOWANCE_MIB} MiB)")
    path = write_result("stream_memory", result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
