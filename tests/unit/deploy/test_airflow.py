"""deploy/airflow stays consistent and valid: the broker config loads, its policy compiles and renders the
policy the README describes, and the worker environment, pod template and config name the same endpoint."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from proxy.config import Config, load_config
from proxy.policy.session_policy import choose_role, render_session_policy
from proxy.policy.store import compile_directory
from tests.factories import make_identity
from tests.harness.paths import DEPLOY

AIRFLOW = DEPLOY / "airflow"
STATIC_KEY_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                        "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_AUTHORIZATION_TOKEN"}


def worker_env() -> dict[str, str]:
    lines = (AIRFLOW / "worker.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def load_airflow_config() -> Config:
    """As `idgate check-config` in the pod sees it: policies_dir is relative to the config file."""
    return load_config(AIRFLOW / "idgate.yaml", env={})


def test_worker_env_has_the_container_provider_and_no_static_keys() -> None:
    env = worker_env()
    assert set(env) == {"AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                        "AWS_DEFAULT_REGION"}
    assert not STATIC_KEY_VARIABLES & set(env)
    assert urlsplit(env["AWS_CONTAINER_CREDENTIALS_FULL_URI"]).hostname == "127.0.0.1"   # botocore: http to loopback only


def test_config_serves_the_endpoint_the_worker_calls() -> None:
    config = load_airflow_config()
    assert config.policies_dir == AIRFLOW / "policies"
    uri = urlsplit(worker_env()["AWS_CONTAINER_CREDENTIALS_FULL_URI"])
    assert config.credentials.enabled and config.credentials.path == uri.path
    assert (config.listen.host, config.listen.port) == (uri.hostname, uri.port)


def test_policy_grants_the_worker_its_own_rows_under_the_role_it_asks_for() -> None:
    config = load_airflow_config()
    policy = compile_directory(config.policies_dir)
    role = parse_qs(urlsplit(worker_env()["AWS_CONTAINER_CREDENTIALS_FULL_URI"]).query)["role"][0]
    subject = "system:serviceaccount:airflow:airflow-worker"
    identity = make_identity(subject, issuer=config.issuers[0].issuer, claims={"sub": subject})
    choice = choose_role(policy.rules_for_identity(identity), role)
    document = json.loads(render_session_policy(choice, identity.claims, config.aws.region).document)
    [statement] = document["Statement"]
    assert statement["Resource"] == ["arn:aws:dynamodb:us-east-1:123456789012:table/orders"]
    assert statement["Condition"]["ForAllValues:StringEquals"]["dynamodb:LeadingKeys"] == [subject]
    other = make_identity("system:serviceaccount:airflow:other", issuer=config.issuers[0].issuer)
    assert policy.rules_for_identity(other) == ()


def test_pod_template_matches_worker_env() -> None:
    pod = yaml.safe_load((AIRFLOW / "pod_template.yaml").read_text())
    [base] = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
    assert {e["name"]: e["value"] for e in base["env"]} == worker_env()
    token_dir = str(Path(worker_env()["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]).parent)
    assert {m["mountPath"] for m in base["volumeMounts"]} == {token_dir}
    [projected] = [v for v in pod["spec"]["volumes"] if v["name"] == "idgate-token"]
    source = projected["projected"]["sources"][0]["serviceAccountToken"]
    assert source["audience"] == "idgate" and source["path"] == "token"
    assert pod["metadata"]["annotations"]["eks.amazonaws.com/skip-containers"] == "base"


def test_dag_uses_the_default_credential_chain() -> None:
    tree = ast.parse((AIRFLOW / "dags" / "orders_via_idgate.py").read_text())
    hooks = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and getattr(node.func, "id", None) == "DynamoDBHook"]
    assert hooks and all(any(k.arg == "aws_conn_id" and isinstance(k.value, ast.Constant) and k.value.value is None
                             for k in hook.keywords) for hook in hooks)


GATEWAY = AIRFLOW / "gateway"


def gateway_worker_env() -> dict[str, str]:
    lines = (GATEWAY / "worker.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_gateway_worker_env_points_boto3_at_the_gateway_with_no_keys() -> None:
    from proxy.aws.gateway_keys import new_key_ring_text

    env = gateway_worker_env()
    assert set(env) == {"AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                        "AWS_ENDPOINT_URL_DYNAMODB", "AWS_DEFAULT_REGION"}
    assert not STATIC_KEY_VARIABLES & set(env)
    config = load_config(GATEWAY / "idgate.yaml", env={"IDGATE_GATEWAY_KEYS": new_key_ring_text()})
    endpoint = urlsplit(env["AWS_ENDPOINT_URL_DYNAMODB"])
    assert config.aws.gateway.enabled and config.aws.gateway.path == endpoint.path
    assert (config.listen.host, config.listen.port) == (endpoint.hostname, endpoint.port)
    uri = urlsplit(env["AWS_CONTAINER_CREDENTIALS_FULL_URI"])
    assert config.credentials.enabled and config.credentials.path == uri.path
    policy = compile_directory(config.policies_dir)
    subject = "system:serviceaccount:airflow:airflow-worker"
    identity = make_identity(subject, issuer=config.issuers[0].issuer, claims={"sub": subject})
    choice = choose_role(policy.rules_for_identity(identity), parse_qs(uri.query)["role"][0])
    assert choice.gateway


def test_gateway_config_without_its_key_ring_names_what_is_missing() -> None:
    from proxy.core.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        load_config(GATEWAY / "idgate.yaml", env={})
    assert [p for p in map(str, refused.value.problems) if "IDGATE_GATEWAY_KEYS" in p and "idgate.yaml:" in p]


def test_the_sidecars_readiness_probe_asks_the_admin_listener_from_inside_the_pod() -> None:
    """The kubelet sends an httpGet probe from the node: to the pod's IP, where a loopback listener does not
    answer, or (with `host: 127.0.0.1`) to the node's own loopback.  Such a probe never succeeds, the native
    sidecar never becomes ready and no task container ever starts."""
    pod = yaml.safe_load((AIRFLOW / "pod_template.yaml").read_text())
    [idgate] = [c for c in pod["spec"]["initContainers"] if c["name"] == "idgate"]
    admin = load_airflow_config().admin
    assert admin.host == "127.0.0.1"
    probe = idgate["readinessProbe"]
    assert "httpGet" not in probe
    [program, flag, code] = probe["exec"]["command"]
    assert (program, flag) == ("python", "-c")             # the image's Python (deploy/container/Containerfile)
    assert f"urlopen('http://127.0.0.1:{admin.port}/readyz', timeout=2)" in code
    compile(code, "readinessProbe", "exec")
