"""`idgate serve` as a process: signals, policy reload, several workers on one port, the event loop it runs on."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import grpc
import pytest
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from proxy.cli import _loop_name
from proxy.policy.store import compile_directory
from tests.harness.processes import HOST, free_port
from tests.harness.servers import LocalIssuer, RecordingUpstream, local_issuer, raw_http, serve_app, write_config
from tests.harness.stack import example_policies

DEADLINE = 20.0


@asynccontextmanager
async def serve(config: Path, *extra: str, env: dict[str, str] | None = None,
                ) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--config", str(config), *extra,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env)
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


async def stack_config(tmp_path: Path, issuer: LocalIssuer, upstream_port: int | None = None, **top) -> Path:
    return write_config(tmp_path, issuer=issuer.issuer.issuer_url, audience="orders-api",
                        upstream_port=upstream_port or free_port(),
                        policies=example_policies(tmp_path, issuer.issuer.issuer_url), **top)


async def test_sighup_reloads_policy_and_a_bad_file_keeps_the_old_one(tmp_path):
    async with local_issuer() as issuer, aiohttp.ClientSession() as http:
        config = await stack_config(tmp_path, issuer)
        async with serve(config) as (process, started):
            listen, token = started["listen"], issuer.token("svc-web-1", ("web",))
            assert await status_of(http, listen, token) == 403
            (tmp_path / "policies" / "web.yaml").write_text(WEB_RULE.format(issuer=issuer.issuer.issuer_url))
            process.send_signal(signal.SIGHUP)
            on_disk = len(compile_directory(tmp_path / "policies").rules)      # the examples and web.yaml
            assert (await next_log(process, "policy reloaded"))["rules"] == on_disk
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


def without_uvloop(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python cannot import uvloop: a package of that name first on the path refuses."""
    blocked = tmp_path / "no-uvloop" / "uvloop"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text('raise ImportError("uvloop is kept out of this test")\n')
    path = os.pathsep.join(filter(None, [str(blocked.parent), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


async def reported_loop(http: aiohttp.ClientSession, started: dict) -> str:
    """The loop idgate says it serves on: its startup log line and its metric must agree."""
    async with http.get(f"http://{started['admin']}/metrics") as metrics:
        exposed = [line for line in (await metrics.text()).splitlines() if line.startswith("idgate_event_loop_info{")]
    assert exposed == [f'idgate_event_loop_info{{loop="{started["loop"]}"}} 1.0']
    return started["loop"]


async def grpc_check_status(port: int, token: str) -> int:
    request = CheckRequest()
    http = request.attributes.request.http
    http.method, http.host, http.path, http.id = "GET", "orders.internal", "/v1/orders/7", "req-loop"
    http.headers["authorization"] = f"Bearer {token}"
    async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
        check = channel.unary_unary("/envoy.service.auth.v3.Authorization/Check")
        answer = CheckResponse.FromString(await check(request.SerializeToString(), timeout=DEADLINE))
    return answer.status.code


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_each_loop_serves_every_listener_and_says_which_it_is(tmp_path, loop):
    # The in-process suite runs idgate on asyncio only: here each loop meets the reverse proxy, a head
    # refused by idgate's own protocol code, and gRPC ext_authz on idgate's own HTTP/2 server.
    upstream, grpc_port = RecordingUpstream(), free_port()
    async with local_issuer() as issuer, serve_app(upstream.app()) as upstream_port:
        config = await stack_config(tmp_path, issuer, upstream_port, trusted_proxies=[f"{HOST}/32"],
                                    limits={"max_head_bytes": 16384},
                                    ext_authz={"http": {}, "grpc": {"host": HOST, "port": grpc_port}})
        token = issuer.token("svc-etl-7", ("data-eng",), tenant="acme")
        async with serve(config, "--loop", loop) as (_, started), aiohttp.ClientSession() as http:
            assert await reported_loop(http, started) == loop
            assert await status_of(http, started["listen"], token) == 200
            unfinished_head = b"GET /v1/orders/7 HTTP/1.1\r\nHost: orders.internal\r\n" + b"".join(
                f"X-Pad-{i}: {'p' * 1000}\r\n".encode() for i in range(40))
            assert (await raw_http(int(started["listen"].rsplit(":", 1)[1]), unfinished_head)).status == 431
            assert await grpc_check_status(grpc_port, token) == 0
    assert [r.raw_path for r in upstream.received] == ["/v1/orders/7"]


async def test_auto_takes_uvloop_when_installed_and_asyncio_when_not(tmp_path):
    async with local_issuer() as issuer:
        config = await stack_config(tmp_path, issuer)
        for env, expected in ((None, "uvloop"), (without_uvloop(tmp_path), "asyncio")):  # the test extra has uvloop
            async with serve(config, env=env) as (_, started), aiohttp.ClientSession() as http:
                assert await reported_loop(http, started) == expected


async def test_loop_uvloop_without_uvloop_is_one_line_and_a_usage_error(tmp_path):
    async with local_issuer() as issuer:
        config = await stack_config(tmp_path, issuer)
    done = subprocess.run([sys.executable, "-m", "proxy", "serve", "--config", str(config), "--loop", "uvloop"],
                          env=without_uvloop(tmp_path), capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "idgate: --loop uvloop: uvloop cannot be imported (install it with pip install 'idgate[fast]')"]


async def test_the_in_process_suite_runs_idgate_on_the_asyncio_loop():
    # Every other test runs idgate in pytest's loop: that is what keeps the asyncio loop tested now that
    # `idgate serve` takes uvloop by default.
    assert _loop_name(asyncio.get_running_loop()) == "asyncio"


@pytest.mark.parametrize("taken", ["listen", "admin", "ext_authz.grpc"])
async def test_a_port_in_use_is_one_line_naming_the_listener_and_the_fix(tmp_path, taken):
    ports = {"listen": free_port(), "admin": free_port(), "ext_authz.grpc": free_port()}
    holder = socket.create_server((HOST, ports[taken]))          # someone else listens there
    try:
        async with local_issuer() as issuer:
            config = await stack_config(tmp_path, issuer, listen={"host": HOST, "port": ports["listen"]},
                                        admin={"host": HOST, "port": ports["admin"]},
                                        ext_authz={"grpc": {"host": HOST, "port": ports["ext_authz.grpc"]}})
            done = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy", "serve", "--config", str(config),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            _, stderr = await asyncio.wait_for(done.communicate(), DEADLINE)
    finally:
        holder.close()
    text = stderr.decode()
    assert done.returncode == 1
    assert "Traceback" not in text
    assert (f"idgate: cannot listen on {HOST}:{ports[taken]} ({taken}): the address is already in use "
            f"(another idgate, or another server, listens there); stop the other process or choose another "
            f"{taken}.host/{taken}.port") in text


async def test_an_audit_file_another_idgate_holds_is_one_line_naming_the_fix(tmp_path):
    async with local_issuer() as issuer:
        config = await stack_config(tmp_path, issuer)          # ports 0: only the audit file is shared
        async with serve(config):
            second = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy", "serve", "--config", str(config),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            _, stderr = await asyncio.wait_for(second.communicate(), DEADLINE)
    text = stderr.decode()
    assert second.returncode == 1
    assert "Traceback" not in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("idgate: the audit log cannot be opened: ")
    assert "the audit file is locked by another process" in last
    assert last.endswith("stop the other idgate or choose another audit.path")
