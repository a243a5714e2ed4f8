"""`idgate gateway-keys` and `idgate check --dynamodb`, run as a user would: a new key ring that the
gateway's config then loads, and a DynamoDB call explained as touches with the gateway's verdict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.paths import REPO

POLICY = """
rules:
  - id: tenant-orders
    who: {issuer: http://127.0.0.1:9400, groups: [data-eng]}
    aws:
      role_arn: arn:aws:iam::123456789012:role/tenant
      gateway: true
      dynamodb: [{table: orders, actions: [GetItem, Query], leading_keys: ["${claims.tenant}"]}]
"""
CLAIMS = json.dumps({"iss": "http://127.0.0.1:9400", "sub": "svc-etl-acme", "groups": ["data-eng"], "tenant": "acme"})


def idgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "tenant.yaml").write_text(POLICY)
    ring = idgate("gateway-keys", "--key-id", "k2026")
    assert ring.returncode == 0, ring.stderr
    (tmp_path / "ring.json").write_text(ring.stdout)
    (tmp_path / "ring.json").chmod(0o600)
    path = tmp_path / "idgate.yaml"
    path.write_text("issuers: [{issuer: http://127.0.0.1:9400, audiences: [x]}]\npolicies_dir: policies\n"
                    "credentials: {enabled: true}\naws:\n  gateway: {enabled: true, key_file: ring.json}\n")
    return path


def test_a_new_key_ring_loads(config: Path) -> None:
    ring = json.loads((config.parent / "ring.json").read_text())
    assert ring["active"] == "k2026" and set(ring["keys"]) == {"k2026"} and ring["redaction_key"]
    assert idgate("check-config", "-c", str(config)).returncode == 0


def test_check_config_names_the_key_rings_problem(config: Path) -> None:
    (config.parent / "ring.json").write_text('{"active": "k9", "keys": {}}')
    result = idgate("check-config", "-c", str(config))
    assert result.returncode == 2
    assert "ring.json" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("key, decision, reason", [("acme", "allow", "matched"), ("globex", "deny", "leading_key_not_granted")])
def test_check_explains_a_dynamodb_call(config: Path, key: str, decision: str, reason: str) -> None:
    body = json.dumps({"TableName": "orders", "Key": {"pk": {"S": key}, "sk": {"S": "1"}}})
    result = idgate("check", "-c", str(config), "--token-claims", CLAIMS, "--dynamodb", "GetItem", "--body", body,
                    "--key-schema", "orders=pk,sk")
    answer = json.loads(result.stdout)
    assert (answer["decision"], answer["reasons"]) == (decision, [reason])
    assert answer["touches"][0]["keys"] == [key] and answer["gateway"] is True
    assert result.returncode == (0 if decision == "allow" else 1)


def test_check_asks_for_a_missing_key_schema(config: Path) -> None:
    body = json.dumps({"TableName": "orders", "Key": {"pk": {"S": "acme"}}})
    result = idgate("check", "-c", str(config), "--token-claims", CLAIMS, "--dynamodb", "GetItem", "--body", body)
    assert result.returncode == 2 and "--key-schema" in result.stderr
