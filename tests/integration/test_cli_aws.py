"""`idgate check` and `idgate check-config` for the credential broker, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ISSUER = "http://127.0.0.1:9400"


def idgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def config_for(tmp_path: Path, policies: Path, region: str = "eu-west-1") -> Path:
    config = tmp_path / "idgate.yaml"
    config.write_text(f"issuers: [{{issuer: '{ISSUER}', audiences: [orders-api]}}]\n"
                      f"policies_dir: {policies}\naws: {{region: {region}}}\n")
    return config


def check(config: Path, claims: dict[str, object]) -> dict[str, object]:
    result = idgate("check", "--config", str(config), "--token-claims", json.dumps(claims),
                    "--url", "http://orders.internal/v1/orders/7")
    assert result.returncode in (0, 1), result.stderr
    shown: dict[str, object] = json.loads(result.stdout)
    return shown


def test_check_shows_the_role_and_the_session_policy_it_would_send(tmp_path: Path) -> None:
    shown = check(config_for(tmp_path, REPO / "policies"),
                  {"iss": ISSUER, "sub": "svc-etl-7", "groups": ["data-eng"], "tenant": "acme"})
    role, gateway = shown["aws"]  # type: ignore[misc]
    assert (role["role"], role["rules"], role["duration"], role["gateway"]) == ("etl", ["etl-orders-table"], 3600, False)
    assert (gateway["role"], gateway["rules"], gateway["gateway"]) == ("etl-gateway", ["etl-orders-gateway"], True)
    [statement] = role["session_policy"]["Statement"]
    assert statement["Resource"] == ["arn:aws:dynamodb:eu-west-1:123456789012:table/orders"]
    assert statement["Condition"]["ForAllValues:StringEquals"]["dynamodb:LeadingKeys"] == ["acme"]
    assert role["session_policy_chars"] < 2048 and len(role["session_policy_sha256"]) == 64


def test_check_shows_why_the_broker_would_refuse(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "tenants.yaml").write_text(
        "rules:\n  - id: any-of-my-tenants\n    who: {issuer: '" + ISSUER + "', claims_contain: {tenant: [acme]}}\n"
        "    aws: {role_arn: 'arn:aws:iam::123456789012:role/etl', dynamodb: [{table: orders, actions: [GetItem],"
        " leading_keys: ['${claims.tenant}']}]}\n")
    shown = check(config_for(tmp_path, policies),
                  {"iss": ISSUER, "sub": "svc-etl-9", "groups": ["data-eng"], "tenant": ["acme"]})
    # The rule matches a list claim holding acme (claims_contain), but a list cannot fill the template.
    [role] = shown["aws"]  # type: ignore[misc]
    assert role["denied"]["reason"] == "claim_not_string" and "session_policy" not in role


def test_a_list_claim_does_not_pass_an_exact_claim_rule(tmp_path: Path) -> None:
    """policies/orders.yaml says `claims: {tenant: acme}`: a token whose tenant is [acme, globex] speaks for
    two tenants, so it gets neither the HTTP rule nor the AWS role."""
    shown = check(config_for(tmp_path, REPO / "policies"),
                  {"iss": ISSUER, "sub": "svc-etl-9", "groups": ["data-eng"], "tenant": ["acme", "globex"]})
    assert "aws" not in shown and shown["decision"] == "deny"


def test_check_has_no_aws_section_without_aws_rules(tmp_path: Path) -> None:
    shown = check(config_for(tmp_path, REPO / "policies"), {"iss": ISSUER, "sub": "svc-web-1", "groups": ["web"]})
    assert "aws" not in shown


def test_check_config_reports_a_session_policy_that_could_outgrow_sts(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    tables = "\n".join(f"        - {{table: table-{i}, actions: [GetItem, Query, PutItem], "
                       f"leading_keys: ['${{claims.tenant}}'], attributes: [pk, sk]}}" for i in range(4))
    (policies / "big.yaml").write_text(
        "rules:\n"
        "  - id: too-big\n"
        "    who: {subject: svc-etl-7}\n"
        "    aws:\n"
        "      role_arn: arn:aws:iam::123456789012:role/etl\n"
        "      dynamodb:\n" + tables + "\n")
    result = idgate("check-config", "--config", str(config_for(tmp_path, policies)))
    assert result.returncode == 2
    assert f"{policies / 'big.yaml'}:2: [rule too-big]" in result.stderr and "2048" in result.stderr
