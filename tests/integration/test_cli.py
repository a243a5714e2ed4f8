"""The `idgate` command as a user runs it: a subprocess, exit codes, what it prints."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from proxy.audit import AuditLog
from proxy.config import AuditConfig
from proxy.metrics import Metrics
from tests.harness.servers import write_config

REPO = Path(__file__).resolve().parents[2]
ISSUER = "http://127.0.0.1:9400"


def idgate(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def example_config(tmp_path: Path) -> Path:
    return write_config(tmp_path, issuer=ISSUER, audience="idgate-demo", upstream_port=1, policies=REPO / "policies")


def test_check_config_accepts_the_examples(tmp_path):
    result = idgate("check-config", "--config", str(example_config(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout and "rule(s)" in result.stdout


def test_check_config_reports_every_problem_with_file_and_line(tmp_path):
    config = tmp_path / "idgate.yaml"
    config.write_text(
        "issuers:\n"
        "  - issuer: https://login.example.com\n"      # line 2: no audiences
        "policies_dir: " + str(REPO / "policies") + "\n"
        "listen: {host: 127.0.0.1, port: 8080, colour: blue}\n"   # line 4: unknown key
        "token_cache_size: lots\n"                      # line 5: wrong type
    )
    result = idgate("check-config", "--config", str(config))
    assert result.returncode == 2
    assert f"{config}:2" in result.stderr and f"{config}:4" in result.stderr and f"{config}:5" in result.stderr
    assert "3 problem(s)" in result.stderr


def test_check_config_names_the_policy_file_line_and_rule(tmp_path):
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "a.yaml").write_text("rules:\n  - id: same\n    who: {any: true}\n    http: [{paths: [/x]}]\n")
    (policies / "b.yaml").write_text("rules:\n  - id: same\n    who: {any: true}\n    http: [{paths: [/y]}]\n")
    config = write_config(tmp_path, issuer=ISSUER, audience="a", upstream_port=1, policies=policies)
    result = idgate("check-config", "--config", str(config))
    assert result.returncode == 2
    assert "b.yaml:2" in result.stderr and "same" in result.stderr


def test_check_explains_allow_and_deny(tmp_path):
    config = str(example_config(tmp_path))
    claims = json.dumps({"iss": ISSUER, "sub": "svc-etl-7", "groups": ["data-eng"], "tenant": "acme"})
    allowed = idgate("check", "--config", config, "--token-claims", claims, "--method", "GET",
                     "--url", "http://orders.internal/v1/orders/7")
    assert allowed.returncode == 0
    explained = json.loads(allowed.stdout)
    assert explained["rule"] == "etl-read-orders"
    assert explained["rule_source"] == f"{REPO / 'policies' / 'orders.yaml'}:4"
    denied = idgate("check", "--config", config, "--token-claims", claims, "--method", "GET",
                    "--url", "http://orders.internal/v1/orders/%2e%2e/%2e%2e/admin")
    assert denied.returncode == 1
    explained = json.loads(denied.stdout)
    assert explained["decision"] == "deny" and explained["rule"] == "nobody-touches-admin"
    assert explained["request"]["path"] == "/admin"


def test_audit_verify_detects_an_edited_line(tmp_path):
    log = tmp_path / "audit.jsonl"

    async def write() -> None:
        audit = AuditLog(AuditConfig(path=log), Metrics())
        await audit.open()
        for i in range(5):
            await audit.append({"event": "decision", "decision": "allow", "n": i})
        await audit.close()

    asyncio.run(write())
    assert idgate("audit", "verify", str(log)).returncode == 0
    lines = log.read_text().splitlines()
    lines[2] = lines[2].replace('"allow"', '"deny"')
    log.write_text("\n".join(lines) + "\n")
    result = idgate("audit", "verify", str(log))
    assert result.returncode == 1
    assert f"{log.name}:3" in result.stderr or f"{log}:3" in result.stderr


def test_audit_verify_accepts_what_retention_left_and_nothing_less(tmp_path):
    log = tmp_path / "audit.jsonl"

    async def write() -> None:
        audit = AuditLog(AuditConfig(path=log, rotate_bytes=450, max_segments=2, fsync=False), Metrics())
        await audit.open()
        for i in range(30):
            await audit.append({"event": "decision", "decision": "allow", "n": i})
        await audit.flush()
        await audit.close()

    asyncio.run(write())
    segments = sorted(tmp_path.glob("audit.*.jsonl"))
    assert len(segments) == 2
    result = idgate("audit", "verify", str(log))
    assert result.returncode == 0, result.stderr
    assert "audit verify: ok:" in result.stdout and "(earlier segments deleted by retention)" in result.stdout
    segments[0].unlink()                       # a deletion no retention record accounts for
    result = idgate("audit", "verify", str(log))
    assert result.returncode == 1 and "the chain does not start here" in result.stderr
