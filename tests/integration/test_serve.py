"""`idgate serve` as a process: signals, policy reload, several workers on one port."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from tests.harness.processes import HOST, free_port
from tests.harness.servers import LocalIssuer, local_issuer, write_config
from tests.harness.stack import example_policies

DEADLINE = 20.0


@asynccontextmanager
async def serve(config: Path, *extra: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--config", str(config), *extra,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        started = None
        while started is None:
            line = await asyncio.wait_for(process.stderr.readline(), DEADLINE)
            assert line, "idgate exited before serving"
            entry = json.loads(line)
            if entry["msg"] == "idgate serving":
                started = entry
        yield process, started
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), DEADLINE)


async def next_log(process: asyncio.subprocess.Process, *messages: str) -> dict:
    """The next structured log line whose message is one of `messages` (idgate says when it reloads)."""
    while True:
        line = await asyncio.wait_for(process.stderr.readline(), DEADLINE)
        assert line, f"idgate exited before logging {messages}"
        entry = json.loads(line)
        if entry["msg"] in messages:
            return entry


async def status_of(http: aiohttp.ClientSession, listen: str, token: str) -> int:
    async with http.get(f"http://{listen}/v1/orders/7",
                        headers={"Host": "orders.internal", "Authorization": f"Bearer {token}"}) as response:
        return response.status


WEB_RULE = """
rules:
  - id: web-reads-orders
    who: {{issuer: "{issuer}", subject: [svc-web-1]}}
    http: [{{hosts: [orders.internal], methods: [GET], paths: ["/v1/orders/**"]}}]
"""


async def stack_config(tmp_path: Path, issuer: LocalIssuer, **top) -> Path:
    return write_config(tmp_path, issuer=issuer.issuer.issuer_url, audience="orders-api", upstream_port=free_port(),
                        policies=example_policies(tmp_path, issuer.issuer.issuer_url), **top)


async def test_sighup_reloads_policy_and_a_bad_file_keeps_the_old_one(tmp_path):
    async with local_issuer() as issuer, aiohttp.ClientSession() as http:
        config = await stack_config(tmp_path, issuer)
        async with serve(config) as (process, started):
            listen, token = started["listen"], issuer.token("svc-web-1", ("web",))
            assert await status_of(http, listen, token) == 403
            (tmp_path / "policies" / "web.yaml").write_text(WEB_RULE.format(issuer=issuer.issuer.issuer_url))
            process.send_signal(signal.SIGHUP)
            assert (await next_log(process, "policy reloaded"))["rules"] == 5
            assert await status_of(http, listen, token) == 502  # allowed now; the upstream port is closed
            (tmp_path / "policies" / "broken.yaml").write_text("rules:\n  - id: broken\n    who: {}\n")
            process.send_signal(signal.SIGHUP)
            failed = await next_log(process, "policy reloaded", "policy reload failed, keeping the previous policy")
            assert failed["level"] == "error" and "broken.yaml" in failed["error"]
            async with http.get(f"http://{started['admin']}/readyz") as ready:
                assert "broken.yaml" in (await ready.json())["policy_reload_error"]
            assert await status_of(http, listen, token) == 502  # still the previous, good policy


async def test_two_workers_share_the_port(tmp_path):
    port, admin = free_port(), free_port()
    async with local_issuer() as issuer, aiohttp.ClientSession() as http:
        config = await stack_config(tmp_path, issuer, listen={"host": HOST, "port": port},
                                    admin={"host": HOST, "port": admin})
        async with serve(config, "--workers", "2") as (process, started):
            token = issuer.token("svc-web-1", ("web",))
            statuses = {await status_of(http, f"{HOST}:{port}", token) for _ in range(20)}
            assert statuses == {403}
        assert process.returncode == 0, (await process.stderr.read()).decode()[-3000:]
        segments = sorted(p.name for p in (tmp_path / "audit").glob("audit.w*.jsonl"))
        assert segments and set(segments) <= {"audit.w0.jsonl", "audit.w1.jsonl"}
