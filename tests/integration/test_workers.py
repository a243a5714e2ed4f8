"""`idgate serve --workers N` heals: a killed worker is reaped and started again at its index (readiness
says it is missing meanwhile, a restart is counted and logged), its audit segment's torn tail is repaired and
its chain goes on; SIGTERM stops every worker, also one waiting out its backoff."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.harness.processes import HOST, eventually, eventually_true, free_port
from tests.harness.servers import local_issuer, write_config
from tests.harness.stack import example_policies

DEADLINE = 20.0


@dataclass
class Supervisor:
    process: asyncio.subprocess.Process
    admin: str
    listen: str
    token: str
    logs: list[dict] = field(default_factory=list)

    def workers(self) -> dict[int, int]:
        """worker index -> pid, from the supervisor's children and their command lines."""
        pid = self.process.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except FileNotFoundError:
            return {}
        found = {}
        for child in children:
            with suppress(FileNotFoundError):
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
                if b"--worker-index" in argv:
                    found[int(argv[argv.index(b"--worker-index") + 1])] = int(child)
        return found

    def logged(self, msg: str) -> list[dict]:
        return [entry for entry in self.logs if entry.get("msg") == msg]


async def _read_logs(process: asyncio.subprocess.Process, into: list[dict]) -> None:
    assert process.stderr is not None
    while line := await process.stderr.readline():
        with suppress(ValueError):
            into.append(json.loads(line))


@asynccontextmanager
async def supervised(tmp_path: Path, workers: int = 2) -> AsyncIterator[Supervisor]:
    port, admin = free_port(), free_port()
    async with local_issuer() as issuer:
        config = write_config(tmp_path, issuer=issuer.issuer.issuer_url, audience="orders-api",
                              upstream_port=free_port(), policies=example_policies(tmp_path, issuer.issuer.issuer_url),
                              listen={"host": HOST, "port": port}, admin={"host": HOST, "port": admin})
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "--config", str(config), "--workers", str(workers),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        running = Supervisor(process, f"{HOST}:{admin}", f"{HOST}:{port}", issuer.token("svc-web-1", ("web",)))
        reader = asyncio.create_task(_read_logs(process, running.logs))
        try:
            yield running
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), DEADLINE)
            await asyncio.wait_for(reader, DEADLINE)


def fresh_connections() -> aiohttp.ClientSession:
    """A new connection per request, so SO_REUSEPORT spreads the probes over the workers."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                 timeout=aiohttp.ClientTimeout(total=2))


async def readiness(http: aiohttp.ClientSession, admin: str) -> tuple[int, dict]:
    async with http.get(f"http://{admin}/readyz") as response:
        return response.status, await response.json()


async def readiness_is(http: aiohttp.ClientSession, admin: str, status: int, running: int) -> bool:
    try:
        got, body = await readiness(http, admin)
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False
    return got == status and body["workers"]["running"] == running and body["checks"]["workers"] == (status == 200)


async def all_ready(http: aiohttp.ClientSession, sup: Supervisor, count: int = 2) -> None:
    # Several probes in a row: each may land on any worker, and every one must say the same.
    async def every_probe_ready() -> bool:
        return all([await readiness_is(http, sup.admin, 200, count) for _ in range(6)])
    await eventually_true(every_probe_ready, f"all {count} workers ready", timeout=DEADLINE)


def gone(pid: int) -> bool:
    """Reaped, not merely dead: a zombie still has its /proc entry."""
    return not Path(f"/proc/{pid}").exists()


async def test_a_killed_worker_is_reaped_restarted_and_readiness_waits_for_it(tmp_path):
    async with supervised(tmp_path) as sup, fresh_connections() as http:
        await all_ready(http, sup)
        before = sup.workers()
        assert sorted(before) == [0, 1]
        os.kill(before[1], signal.SIGKILL)

        await eventually_true(lambda: readiness_is(http, sup.admin, 503, 1), "503 while worker 1 is missing",
                              timeout=DEADLINE)
        status, body = await readiness(http, sup.admin)
        assert status == 503 and body["workers"] == {"expected": 2, "running": 1, "missing": [1]}
        await eventually(lambda: gone(before[1]), "the killed worker reaped", timeout=DEADLINE)
        [died] = sup.logged("worker died, restarting it")
        assert (died["worker"], died["pid"], died["status"], died["returncode"]) == (
            1, before[1], "killed by SIGKILL", -signal.SIGKILL)
        assert died["level"] == "error" and died["restart_in_seconds"] == 0.5

        await all_ready(http, sup)
        after = sup.workers()
        assert after[0] == before[0] and after[1] != before[1]
        for _ in range(4):          # whichever worker answers, it reads the supervisor's count
            async with http.get(f"http://{sup.admin}/metrics") as response:
                text = await response.text()
            assert 'idgate_worker_restarts_total{worker="0"} 0.0' in text
            assert 'idgate_worker_restarts_total{worker="1"} 1.0' in text

        sup.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(sup.process.wait(), DEADLINE) == 0
    assert all(gone(pid) for pid in after.values())


async def test_sigterm_stops_every_worker_even_one_in_its_backoff(tmp_path):
    async with supervised(tmp_path) as sup, fresh_connections() as http:
        await all_ready(http, sup)
        before = sup.workers()
        os.kill(before[0], signal.SIGKILL)
        await eventually(lambda: bool(sup.logged("worker died, restarting it")), "the death logged",
                         timeout=DEADLINE)
        sup.process.send_signal(signal.SIGTERM)         # within worker 0's 0.5 s backoff
        assert await asyncio.wait_for(sup.process.wait(), DEADLINE) == 0
    assert [e["worker"] for e in sup.logged("worker started")] == [0, 1], "worker 0 restarted during shutdown"
    assert [e["worker"] for e in sup.logged("worker stopped")] == [1]
    assert all(gone(pid) for pid in before.values())


async def test_sigint_stops_every_worker(tmp_path):
    async with supervised(tmp_path) as sup, fresh_connections() as http:
        await all_ready(http, sup)
        before = sup.workers()
        sup.process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(sup.process.wait(), DEADLINE) == 0
    assert all(gone(pid) for pid in before.values())
    assert sup.logged("worker died, restarting it") == []


async def test_sighup_reloads_every_worker_and_kills_none(tmp_path):
    async with supervised(tmp_path) as sup, fresh_connections() as http:
        await all_ready(http, sup)
        before = sup.workers()
        sup.process.send_signal(signal.SIGHUP)
        await eventually(lambda: len(sup.logged("policy reloaded")) == 2, "both workers reloaded", timeout=DEADLINE)
        await all_ready(http, sup)
        assert sup.workers() == before and sup.logged("worker died, restarting it") == []


def segment_lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")


async def test_a_worker_killed_mid_write_repairs_its_torn_tail_and_its_chain_goes_on(tmp_path):
    segment = tmp_path / "audit" / "audit.w1.jsonl"
    async with supervised(tmp_path) as sup, fresh_connections() as http:
        await all_ready(http, sup)
        stop_load = asyncio.Event()

        async def load() -> None:       # denied requests: each one an audited decision
            while not stop_load.is_set():
                with suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with http.get(f"http://{sup.listen}/v1/orders/7", headers={
                            "Host": "orders.internal", "Authorization": f"Bearer {sup.token}"}) as response:
                        await response.read()

        loaders = [asyncio.create_task(load()) for _ in range(4)]
        try:
            await eventually(lambda: segment.exists() and len(segment_lines(segment)) > 20,
                             "worker 1 writing its segment", timeout=DEADLINE)
            victim = sup.workers()[1]
            # Frozen between two writes, then a half-written record, then killed: what a SIGKILL in the middle
            # of an append leaves behind, without depending on the timing of one.
            os.kill(victim, signal.SIGSTOP)
            intact = segment.read_bytes()
            assert intact.endswith(b"\n")
            with segment.open("ab") as torn:
                torn.write(b'{"v":1,"seq":999999,"ts":"2026-')
            os.kill(victim, signal.SIGKILL)
            await eventually(lambda: gone(victim), "the killed worker reaped", timeout=DEADLINE)
            await all_ready(http, sup)
            await eventually(lambda: segment.read_bytes().startswith(intact)
                             and len(segment.read_bytes()) > len(intact) + 1000,
                             "the restarted worker appending to its segment", timeout=DEADLINE)
        finally:
            stop_load.set()
            await asyncio.gather(*loaders)
        sup.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(sup.process.wait(), DEADLINE) == 0

    data = segment.read_bytes()
    assert data.startswith(intact) and b"999999" not in data
    last_before = json.loads(intact.rstrip(b"\n").rsplit(b"\n", 1)[-1])
    first_after = json.loads(data[len(intact):].split(b"\n", 1)[0])
    assert first_after["seq"] == last_before["seq"] + 1 and first_after["prev"] == last_before["hash"]
    for path in sorted((tmp_path / "audit").glob("audit.w*.jsonl")):
        verified = subprocess.run([sys.executable, "-m", "proxy", "audit", "verify", str(path)],
                                  capture_output=True, text=True, timeout=DEADLINE)
        assert verified.returncode == 0, (path, verified.stdout, verified.stderr)


async def test_a_worker_that_cannot_start_stops_the_supervisor(tmp_path):
    holder = socket.create_server((HOST, 0))        # someone else listens on the admin port, no SO_REUSEPORT
    try:
        async with supervised_on_taken_admin(tmp_path, holder.getsockname()[1]) as (process, stderr):
            assert process.returncode == 1
    finally:
        holder.close()
    entries = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    refused = [e for e in entries if e.get("msg") == "worker could not start, stopping the others"]
    assert refused and refused[0]["status"] == "exited with 1"
    assert not [e for e in entries if e.get("msg") == "worker died, restarting it"]


@asynccontextmanager
async def supervised_on_taken_admin(tmp_path: Path, admin: int) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    async with local_issuer() as issuer:
        config = write_config(tmp_path, issuer=issuer.issuer.issuer_url, audience="orders-api",
                              upstream_port=free_port(), policies=example_policies(tmp_path, issuer.issuer.issuer_url),
                              listen={"host": HOST, "port": free_port()}, admin={"host": HOST, "port": admin})
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "--config", str(config), "--workers", "2",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), DEADLINE)
            yield process, stderr.decode()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
