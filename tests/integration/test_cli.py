"""The `idgate` command as a user runs it: a subprocess, exit codes, what it prints."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys
from pathlib import Path


from proxy.audit import AuditLog
from proxy.config import AuditConfig
from proxy.metrics import Metrics
from tests.harness.segments import write_segment
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


def padded(n: int) -> dict[str, object]:
    """A ~2 KB record."""
    return {"event": "decision", "n": n, "pad": "x" * 2000}


# Runs `idgate audit verify` in a fresh process and prints how far its peak RSS rose above its RSS
# just before verifying (imports done, VmHWM reset), so import-time peaks cannot hide the verify's.
_MEASURED_VERIFY = """
import json, sys
from pathlib import Path
import proxy.audit, proxy.cli

def status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])

Path("/proc/self/clear_refs").write_text("5")
before = status_kib("VmRSS")
code = proxy.cli.main(["audit", "verify", sys.argv[1]])
print(json.dumps({"code": code, "growth_kib": status_kib("VmHWM") - before}), file=sys.stderr)
"""


def test_audit_verify_runs_in_constant_memory(tmp_path):
    # Linux's /proc/self/clear_refs resets the peak; where it cannot be written the measurement fails
    # loudly rather than skip.
    log = tmp_path / "audit.jsonl"
    count = write_segment(log, 64 << 20, padded)
    result = subprocess.run([sys.executable, "-c", _MEASURED_VERIFY, str(log)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    figures = json.loads(result.stderr.splitlines()[-1])
    assert figures["code"] == 0 and f"ok: {count} record(s)" in result.stdout, result.stderr
    # Reading the segment whole would add its 64 MiB (and more); chunks add a couple of MiB.
    assert figures["growth_kib"] / 1024 < 24, figures


def test_audit_verify_shows_progress_on_a_terminal_and_not_in_a_pipe(tmp_path):
    log = tmp_path / "audit.jsonl"
    write_segment(log, 1, padded)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "audit", "verify", str(log)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    terminal = b""
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:              # EIO: the child closed its end
            break
        if not data:
            break
        terminal += data
    os.close(master)
    stdout = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0 and "audit verify: ok: 500 record(s)" in stdout
    assert f"\r\x1b[Kaudit verify: {log}: 0 record(s) so far".encode() in terminal
    assert terminal.endswith(b"\r\x1b[K")          # erased before the results
    piped = idgate("audit", "verify", str(log))
    assert piped.returncode == 0 and piped.stderr == ""
