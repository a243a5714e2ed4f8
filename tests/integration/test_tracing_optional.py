"""Tracing is optional: idgate imports and serves without the OpenTelemetry packages (hidden from a real
`idgate serve` process), `check-config` names the extra a `tracing:` section needs, and a bad section is
reported line by line, never as a traceback."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.harness.paths import REPO, TEST_DATA
from tests.harness.servers import RecordingUpstream, local_issuer, serve_app, write_config
from tests.harness.stack import example_policies

DEADLINE = 20.0
# Run idgate's CLI with every opentelemetry module unimportable, as on an install without the otel extra.
WITHOUT_OTEL = """
import runpy, sys

class HideOpenTelemetry:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, HideOpenTelemetry())
sys.argv = ["idgate", *sys.argv[1:]]
runpy.run_module("proxy", run_name="__main__", alter_sys=True)
"""


def bootstrap(tmp_path: Path) -> Path:
    script = tmp_path / "without_otel.py"
    script.write_text(WITHOUT_OTEL)
    return script


async def test_idgate_serves_without_the_opentelemetry_packages(tmp_path):
    async with local_issuer("orders-api") as issuer:
        upstream = RecordingUpstream()
        async with serve_app(upstream.app()) as upstream_port:
            config = write_config(tmp_path, issuer=issuer.issuer.issuer_url, audience="orders-api",
                                  upstream_port=upstream_port, policies=example_policies(tmp_path, issuer.issuer.issuer_url))
            process = await asyncio.create_subprocess_exec(
                sys.executable, str(bootstrap(tmp_path)), "serve", "--config", str(config),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            try:
                while True:
                    line = await asyncio.wait_for(process.stderr.readline(), DEADLINE)
                    assert line, "idgate exited before serving"
                    entry = json.loads(line)
                    if entry["msg"] == "idgate serving":
                        break
                listen = entry["listen"]
                token = issuer.token("svc-etl-7", ("data-eng",), tenant="acme")
                async with aiohttp.ClientSession() as http, http.get(
                        f"http://{listen}/v1/orders/7", headers={"Host": "orders.internal",
                                                                 "Authorization": f"Bearer {token}"}) as response:
                    assert response.status == 200
            finally:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), DEADLINE)
    assert process.returncode == 0
    [decision] = [json.loads(line) for line in (tmp_path / "audit" / "audit.jsonl").read_text().splitlines()
                  if json.loads(line)["event"] == "decision"]
    assert "trace_id" not in decision


def test_check_config_names_the_otel_extra_when_it_is_missing(tmp_path):
    config = write_config(tmp_path, issuer="http://127.0.0.1:9400", audience="a", upstream_port=1,
                          policies=REPO / "policies", tracing={"endpoint": "http://127.0.0.1:4318/v1/traces"})
    result = subprocess.run([sys.executable, str(bootstrap(tmp_path)), "check-config", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "pip install 'idgate[otel]'" in result.stderr and "Traceback" not in result.stderr


def test_check_config_reports_a_bad_tracing_section_by_file_and_line():
    path = TEST_DATA / "config" / "invalid-tracing.yaml"
    result = subprocess.run([sys.executable, "-m", "proxy", "check-config", "--config", str(path)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    marked = [n for n, line in enumerate(path.read_text().splitlines(), start=1) if "# ERROR" in line]
    assert marked and all(f"{path}:{n}:" in result.stderr for n in marked), result.stderr
