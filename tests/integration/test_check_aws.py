"""`idgate check --aws`: what a worker would be vended, asked without an HTTP request, and the README's
Airflow walkthrough command run exactly as printed there."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_CONFIG = REPO / "deploy" / "airflow" / "idgate.yaml"
WORKER = {"iss": "https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE",
          "sub": "system:serviceaccount:airflow:airflow-worker"}


def _readme_command() -> str:
    blocks = re.findall(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    [command] = [block for block in blocks if "idgate check --config deploy/airflow/idgate.yaml" in block]
    return command


def test_the_readme_airflow_check_runs_as_written_and_shows_the_role() -> None:
    command = _readme_command()
    assert command.startswith(".venv/bin/idgate check ") and "--aws" in command and "--url" not in command
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["decision"] == "allow"
    assert [role["role"] for role in answer["aws"]] == ["airflow-orders"]
    assert answer["aws"][0]["session_policy"]["Version"] == "2012-10-17"


def _check_aws(claims: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", "check", "--config", str(AIRFLOW_CONFIG), "--aws",
                           "--token-claims", json.dumps(claims)], capture_output=True, text=True, timeout=60,
                          check=False)


def test_an_identity_no_aws_rule_names_is_denied_with_no_roles() -> None:
    done = _check_aws({**WORKER, "sub": "system:serviceaccount:airflow:someone-else"})
    assert done.returncode == 1
    answer = json.loads(done.stdout)
    assert answer["decision"] == "deny" and answer["aws"] == []


def test_aws_and_url_cannot_be_asked_together() -> None:
    done = subprocess.run([sys.executable, "-m", "proxy", "check", "--config", str(AIRFLOW_CONFIG), "--aws",
                           "--url", "http://orders.internal/", "--token-claims", json.dumps(WORKER)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "not allowed with argument" in done.stderr and "Traceback" not in done.stderr
