"""`idgate check-config` on the shipped configs, and `--offline` (a CI pipeline linting configs away from the
machine that serves them): structure and references checked, the runtime files and secrets not required."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def idgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin"})


def shipped_idgate_configs() -> list[Path]:
    """Every idgate config under deploy/: a single-document YAML mapping with policies_dir, so a config
    added later is covered without editing this list (Envoy, Traefik, Kubernetes and policy files are not)."""
    found = []
    for path in sorted(REPO.glob("deploy/**/*.y*ml")):
        try:
            document = yaml.safe_load(path.read_text())
        except yaml.YAMLError:   # multi-document files (Kubernetes manifests) are not idgate configs
            continue
        if isinstance(document, dict) and "policies_dir" in document:
            found.append(path)
    return found


def test_the_shipped_configs_are_found() -> None:
    names = {str(p.relative_to(REPO)) for p in shipped_idgate_configs()}
    assert {"deploy/config/idgate.yaml", "deploy/envoy/idgate.yaml", "deploy/airflow/idgate.yaml",
            "deploy/airflow/gateway/idgate.yaml"} <= names


@pytest.mark.parametrize("config", shipped_idgate_configs(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_passes_the_offline_check(config: Path) -> None:
    result = idgate("check-config", "--offline", "--config", str(config.relative_to(REPO)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{config.relative_to(REPO)}: ok (offline)")
    assert result.stderr == ""   # no rule naming an issuer the config does not trust


def test_without_offline_every_missing_runtime_file_is_named_by_its_path() -> None:
    result = idgate("check-config", "--config", "deploy/config/idgate.yaml")
    assert result.returncode == 2
    problems = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert problems == [
        "deploy/config/idgate.yaml:6: listen.tls.cert_file: /etc/idgate/tls.crt: cannot read: No such file or directory",
        "deploy/config/idgate.yaml:6: listen.tls.key_file: /etc/idgate/tls.key: cannot read: No such file or directory",
        "deploy/config/idgate.yaml:13: policies_dir: /etc/idgate/policies: must be an existing directory",
        "deploy/config/idgate.yaml:38: audit.shipping.anchors.key_file: /etc/idgate/anchor-key.pem: cannot read: "
        "No such file or directory",
        "deploy/config/idgate.yaml:42: assertion.key_file: /etc/idgate/assertion-key.pem: cannot read: "
        "No such file or directory",
    ]


def test_offline_still_reports_every_structural_problem(tmp_path: Path) -> None:
    config = tmp_path / "idgate.yaml"
    config.write_text(
        "issuers:\n"
        "  - issuer: https://login.example.com\n"
        "    audiences: [orders-api]\n"
        "    jwks_file: /etc/idgate/jwks.json\n"       # a runtime file: not opened offline
        "policies_dir: /etc/idgate/policies\n"
        "listen: {host: 0.0.0.0, port: 8443, tls: {cert_file: /nope.crt, key_file: /nope.key}, colour: blue}\n"
        "routes:\n"
        "  - {name: orders, hosts: [orders.internal], upstream: 'http://10.0.1.10:8080/api'}\n"
        "aws:\n"
        "  gateway: {enabled: true, path: /}\n"        # the key ring may come from the environment at runtime
    )
    result = idgate("check-config", "--offline", "--config", str(config))
    assert result.returncode == 2
    assert f"{config}:6: listen.colour: unknown key" in result.stderr
    assert f"{config}:8: routes[0].upstream: must be scheme://host[:port] with no path" in result.stderr
    assert f"{config}:10: aws.gateway.path: must not be '/'" in result.stderr
    # a reference between two parts of the config, not a file: still checked
    assert f"{config}:10: aws.gateway.path: must not overlap the credentials, forward_auth" in result.stderr
    assert "4 problem(s)" in result.stderr and "cannot read" not in result.stderr


def test_offline_with_policies_checks_them_and_names_rules_no_trusted_issuer_can_match(tmp_path: Path) -> None:
    result = idgate("check-config", "--offline", "--config", "deploy/config/idgate.yaml", "--policies", "policies")
    assert result.returncode == 0, result.stderr
    assert "6 rule(s) from policies" in result.stdout
    warnings = result.stderr.splitlines()
    assert warnings and all("does not trust (http://127.0.0.1:9400): it can never match" in w for w in warnings)
    assert any(w.startswith("idgate: warning: policies/orders.yaml:4: rule 'etl-read-orders'") for w in warnings)


def test_offline_still_refuses_a_bad_policy_file(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("rules:\n  - id: x\n    who: {any: true}\n    http: [{paths: [relative]}]\n")
    result = idgate("check-config", "--offline", "--config", "deploy/config/idgate.yaml", "--policies", str(tmp_path))
    assert result.returncode == 2
    assert f"{tmp_path / 'bad.yaml'}:4" in result.stderr
