"""deploy/envoy and deploy/kubernetes stay usable: Envoy itself validates the shipped configs (as shipped,
as rendered for the tests, and as embedded in the Pod manifest), the safety settings the README promises
are there, and the Pod's pieces point at each other."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import load_config
from tests.harness.envoy import (
    DEPLOY_ENVOY, MODES, REPO, ext_authz_filter, http_connection_manager, load_deploy_config, render, validate,
)

KUBERNETES = REPO / "deploy" / "kubernetes" / "idgate-sidecar.yaml"


def pod_documents() -> dict[str, Any]:
    docs = {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(KUBERNETES.read_text())}
    return docs


def assert_valid(path: Path) -> None:
    done = validate(path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout + done.stderr


@pytest.mark.parametrize("mode", MODES)
def test_shipped_config_passes_envoy_validate(mode):
    assert_valid(DEPLOY_ENVOY / f"envoy-{mode}.yaml")


@pytest.mark.parametrize("mode", MODES)
def test_rendered_config_passes_envoy_validate(mode, tmp_path):
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(render(load_deploy_config(mode), app_port=18080, idgate_port=19191)))
    assert_valid(path)


@pytest.mark.parametrize("mode", MODES)
def test_shipped_config_fails_closed_and_trusts_only_its_own_view(mode):
    config = load_deploy_config(mode)
    hcm = http_connection_manager(config)
    ext_authz = ext_authz_filter(config)
    assert ext_authz is not None
    assert ext_authz["failure_mode_allow"] is False
    assert ext_authz["status_on_error"] == {"code": "ServiceUnavailable"}
    assert hcm["use_remote_address"] is True
    assert hcm["normalize_path"] is False and hcm["merge_slashes"] is False
    service = ext_authz.get("grpc_service") or ext_authz["http_service"]["server_uri"]
    assert service["timeout"] == "0.5s"
    [health, catch_all] = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert health["match"] == {"path": "/healthz"}        # exact: never a prefix
    assert health["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["disabled"] is True
    assert "typed_per_filter_config" not in catch_all
    assert [f["name"] for f in hcm["http_filters"]] == [
        "envoy.filters.http.header_mutation", "envoy.filters.http.ext_authz", "envoy.filters.http.router"]


@pytest.mark.parametrize("mode", MODES)
def test_shipped_config_strips_client_identity_headers_on_every_route(mode):
    """Before ext_authz (which then adds idgate's own), never disabled per route or virtual host, and
    underscore spellings refused; tests/integration/envoy/test_envoy_identity_headers.py shows it."""
    hcm = http_connection_manager(load_deploy_config(mode))
    assert hcm["common_http_protocol_options"]["headers_with_underscores_action"] == "REJECT_REQUEST"
    [strip] = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.header_mutation"]
    assert "disabled" not in strip
    removed = [m["remove_on_match"]["key_matcher"] for m in strip["typed_config"]["mutations"]["request_mutations"]]
    assert all(m.pop("ignore_case") is True for m in removed)
    assert removed == [{"prefix": "x-idgate-"}, {"prefix": "x-auth-request-"}] + [{"exact": name} for name in (
        "x-forwarded-user", "x-forwarded-email", "x-forwarded-groups", "x-forwarded-preferred-username",
        "x-remote-user", "remote-user", "baggage")]
    [virtual_host] = hcm["route_config"]["virtual_hosts"]
    for scope in [hcm["route_config"], virtual_host, *virtual_host["routes"]]:
        assert strip["name"] not in scope.get("typed_per_filter_config", {})


def test_http_mode_passes_only_idgate_headers_upstream():
    ext_authz = ext_authz_filter(load_deploy_config("http"))
    assert ext_authz is not None
    response = ext_authz["http_service"]["authorization_response"]
    assert response["allowed_upstream_headers"] == {"patterns": [{"prefix": "x-idgate-"}]}
    assert ext_authz["http_service"]["path_prefix"] == "/.idgate/ext_authz"


def test_sidecar_idgate_config_matches_the_envoy_configs(tmp_path):
    text = (DEPLOY_ENVOY / "idgate.yaml").read_text()
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    (tmp_path / "assertion").mkdir()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "assertion" / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "idgate.yaml").write_text(text.replace("/etc/idgate/", f"{tmp_path}/").replace("/var/lib/idgate/", f"{tmp_path}/"))
    config = load_config(tmp_path / "idgate.yaml", env={})
    assert config.ext_authz.grpc is not None and config.ext_authz.http is not None
    clusters = {c["name"]: c for mode in MODES for c in load_deploy_config(mode)["static_resources"]["clusters"]}

    def port(cluster: str) -> int:
        endpoint = clusters[cluster]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        return int(endpoint["address"]["socket_address"]["port_value"])

    assert port("idgate_grpc") == config.ext_authz.grpc.port
    assert port("idgate_http") == config.listen.port
    ext_authz = ext_authz_filter(load_deploy_config("http"))
    assert ext_authz is not None and ext_authz["http_service"]["path_prefix"] == config.ext_authz.http.path_prefix
    assert ext_authz["http_service"]["server_uri"]["uri"] == f"http://127.0.0.1:{config.listen.port}"
    assert config.trusted_proxies == ("127.0.0.1/32",)


def test_local_idgate_config_loads():
    config = load_config(DEPLOY_ENVOY / "idgate-local.yaml", env={})
    assert config.ext_authz.grpc is not None and config.ext_authz.grpc.port == 9191
    assert config.listen.port == 8181


def test_pod_configmaps_hold_the_deploy_files_verbatim():
    docs = pod_documents()
    assert docs["ConfigMap/orders-envoy"]["data"]["envoy.yaml"] == (DEPLOY_ENVOY / "envoy-grpc.yaml").read_text()
    assert docs["ConfigMap/orders-idgate"]["data"]["idgate.yaml"] == (DEPLOY_ENVOY / "idgate.yaml").read_text()
    # The demo policies, re-issued to the issuer the pod's config trusts (the demo's is a loopback one).
    policies = docs["ConfigMap/orders-idgate-policies"]["data"]
    demo = {p.name: p.read_text() for p in sorted((REPO / "policies").glob("*.yaml"))}
    assert policies == {
        name: text.replace("  Issuer http://127.0.0.1:9400 is the demo issuer (`idgate demo`).", "")
        .replace("issuer: http://127.0.0.1:9400", "issuer: https://login.example.com")
        for name, text in demo.items()}


def test_pod_embedded_envoy_config_passes_envoy_validate(tmp_path):
    path = tmp_path / "envoy.yaml"
    path.write_text(pod_documents()["ConfigMap/orders-envoy"]["data"]["envoy.yaml"])
    assert_valid(path)


def test_pod_wires_app_envoy_and_idgate_together():
    docs = pod_documents()
    pod = docs["Pod/orders"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"app", "envoy", "idgate"}
    envoy_config = yaml.safe_load(docs["ConfigMap/orders-envoy"]["data"]["envoy.yaml"])
    idgate_config = yaml.safe_load(docs["ConfigMap/orders-idgate"]["data"]["idgate.yaml"])
    app_cluster = next(c for c in envoy_config["static_resources"]["clusters"] if c["name"] == "app")
    app_port = app_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"]
    assert containers["app"]["ports"][0]["containerPort"] == app_port
    listener_port = envoy_config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    assert containers["envoy"]["ports"][0]["containerPort"] == listener_port
    # Probes on idgate's admin listener, which must then listen beyond loopback for the kubelet.
    idgate = containers["idgate"]
    admin_port = idgate_config["admin"]["port"]
    assert idgate["ports"] == [{"name": "idgate-admin", "containerPort": admin_port}]
    assert idgate_config["admin"]["host"] == "0.0.0.0"
    assert idgate["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "idgate-admin"}
    assert idgate["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "idgate-admin"}
    mounts = {m["mountPath"]: m["name"] for m in idgate["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[idgate_config["policies_dir"]]]["configMap"]["name"] == "orders-idgate-policies"
    assert volumes[mounts["/etc/idgate/idgate.yaml"]]["configMap"]["name"] == "orders-idgate"
    assert Path(idgate_config["audit"]["path"]).parent.as_posix() in mounts
    assert Path(idgate_config["assertion"]["key_file"]).parent.as_posix() in mounts
    assert "args" not in idgate        # the image's entrypoint serves /etc/idgate/idgate.yaml
