"""Every manifest under deploy/kubernetes, offline: each document valid against the Kubernetes schemas that
kubernetes-validate bundles (strict: an unknown field is an error), and its pieces pointing at each other:
the ConfigMap'd idgate config and policies load with idgate's own loaders and name the same issuers, the
probes, ports, Services, PodDisruptionBudget, volumes and Secrets fit the config and the pod, and the idgate
container runs locked down.  A manifest added to deploy/kubernetes is covered without editing this file."""

from __future__ import annotations

import copy
import inspect
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import fields, is_dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from aiohttp.web_runner import BaseRunner

from proxy.audit.shipping import CLOSE_TIMEOUT
from proxy.config import load_config
from proxy.config.schema import ENV_AUDIT_INSTANCE, Config
from proxy.core.errors import ConfigError
from proxy.core.hosts import is_loopback
from proxy.policy.store import compile_directory
from tests.harness.paths import DEPLOY

KUBERNETES = DEPLOY / "kubernetes"
# Pinned: the newest schemas kubernetes-validate 1.37.0 bundles (kubernetes_validate.utils.all_versions()).
# A version it does not bundle would silently be checked against the next older one: the first test refuses that.
KUBERNETES_VERSION = "1.37.0"
WORKLOADS = ("Pod", "Deployment")
# SIGTERM: aiohttp lets requests in flight finish for this long, then the audit's tail is shipped.
DRAIN_SECONDS = inspect.signature(BaseRunner.__init__).parameters["shutdown_timeout"].default
WRITABLE_VOLUMES = ("emptyDir", "persistentVolumeClaim", "ephemeral")
Mounted = tuple[dict[str, Any], dict[str, Any], str]     # volumeMount, volume, key of the file in the volume


def manifests() -> list[Path]:
    return sorted(p for p in KUBERNETES.iterdir() if p.suffix in (".yaml", ".yml"))


def image_entrypoint() -> tuple[list[str], PurePosixPath]:
    """The idgate image's ENTRYPOINT and WORKDIR (deploy/container/Containerfile)."""
    text = (DEPLOY / "container" / "Containerfile").read_text()
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M)
    workdir = re.search(r"^WORKDIR (\S+)$", text, re.M)
    assert entrypoint and workdir
    return json.loads(entrypoint[1]), PurePosixPath(workdir[1])


def operator_secrets(text: str) -> dict[str, set[str]]:
    """The Secrets a manifest's comments tell the operator to create (`kubectl create secret ...`), with their keys."""
    secrets: dict[str, set[str]] = {}
    for kind, name, rest in re.findall(r"^#\s*kubectl create secret (generic|tls) (\S+)(.*)$", text, re.M):
        if kind == "tls":
            secrets[name] = {"tls.crt", "tls.key"}
        else:
            sources = re.findall(r"--from-(?:file|literal)=(\S+)", rest)
            secrets[name] = {s.split("=", 1)[0] if "=" in s else PurePosixPath(s).name for s in sources}
    return secrets


def is_idgate(container: dict[str, Any]) -> bool:
    """An idgate container: its image is a repository named idgate (any registry, tag or digest)."""
    return str(container["image"]).split("@")[0].rsplit("/", 1)[-1].split(":")[0] == "idgate"


def selects(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


class Pod:
    """A pod spec of the manifest (a bare Pod, or a Deployment's template) with what it refers to."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.name = f"{doc['kind']}/{doc['metadata']['name']}"
        self.kind = doc["kind"]
        template = doc["spec"]["template"] if self.kind == "Deployment" else doc
        self.labels: dict[str, str] = template["metadata"].get("labels", {})
        self.spec: dict[str, Any] = template["spec"]
        self.replicas: int = doc["spec"].get("replicas", 1) if self.kind == "Deployment" else 1
        self.doc = doc
        self.volumes = {v["name"]: v for v in self.spec.get("volumes", [])}

    def container_ports(self) -> Iterator[dict[str, Any]]:
        for container in self.spec["containers"]:
            yield from container.get("ports", [])

    def mounted(self, container: dict[str, Any], path: PurePosixPath) -> Mounted | None:
        """The mount that holds `path`, its volume, and the file's key in that volume ('' for the mount itself)."""
        mounts = [m for m in container.get("volumeMounts", []) if path == PurePosixPath(m["mountPath"])
                  or PurePosixPath(m["mountPath"]) in path.parents]
        if not mounts:
            return None
        mount = max(mounts, key=lambda m: len(m["mountPath"]))
        inner = path.relative_to(mount["mountPath"]).as_posix() if path != PurePosixPath(mount["mountPath"]) else ""
        key = "/".join(part for part in (mount.get("subPath", ""), inner) if part)
        return mount, self.volumes.get(mount["name"], {}), key


class Check:
    """The problems of one manifest, collected rather than stopping at the first, each naming where."""

    def __init__(self, text: str, docs: list[dict[str, Any]], tmp: Path) -> None:
        self.docs = docs
        self.tmp = tmp
        self.secrets = operator_secrets(text)
        self.config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
        self.pods = [Pod(d) for d in docs if d["kind"] in WORKLOADS]
        self.problems: list[str] = []

    def report(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def run(self) -> list[str]:
        for doc in self.docs:
            self.schema(doc)
        if self.problems:
            return self.problems          # the checks below read well-typed documents
        if not any(is_idgate(c) for pod in self.pods for c in pod.spec["containers"]):
            self.report("manifest", "no idgate container")
        for pod in self.pods:
            self.pod(pod)
        for doc in self.docs:
            if doc["kind"] == "Service":
                self.service(doc)
            elif doc["kind"] == "PodDisruptionBudget":
                self.budget(doc)
        return self.problems

    def schema(self, doc: dict[str, Any]) -> None:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            self.report(where, f"schema: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            self.report(where, f"schema: {exc.message}")

    def pod(self, pod: Pod) -> None:
        for container in pod.spec["containers"]:
            where = f"{pod.name} container {container['name']}"
            if container.get("securityContext", {}).get("privileged"):
                self.report(where, "privileged")
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in pod.volumes:
                    self.report(where, f"volumeMount '{mount['name']}' names no volume")
            if is_idgate(container):
                self.idgate(pod, container, where)
        for volume in pod.volumes.values():
            if "configMap" in volume and volume["configMap"]["name"] not in self.config_maps:
                self.report(pod.name, f"volume {volume['name']}: no ConfigMap {volume['configMap']['name']} "
                                      "in the file")
            if "secret" in volume and volume["secret"]["secretName"] not in self.secrets:
                self.report(pod.name, f"volume {volume['name']}: Secret {volume['secret']['secretName']} is neither "
                                      "in the file nor in its `kubectl create secret` comments")
        if pod.kind == "Deployment":
            self.replicated(pod)

    def replicated(self, pod: Pod) -> None:
        spec = pod.doc["spec"]
        if not selects(spec["selector"].get("matchLabels"), pod.labels):
            self.report(pod.name, "selector does not match the pod template's labels")
        if pod.replicas < 2:
            self.report(pod.name, f"replicas {pod.replicas}: a node drain or a crash is an outage")
        spreads = [c["labelSelector"].get("matchLabels") for c in pod.spec.get("topologySpreadConstraints", [])]
        anti = pod.spec.get("affinity", {}).get("podAntiAffinity", {})
        terms = [t.get("podAffinityTerm", t) for rule in anti.values() for t in rule]
        spreads += [t.get("labelSelector", {}).get("matchLabels") for t in terms]
        if not any(selects(s, pod.labels) for s in spreads):
            self.report(pod.name, "no topologySpreadConstraints or podAntiAffinity over its own pods")
        budgets = [d for d in self.docs if d["kind"] == "PodDisruptionBudget"
                   and selects(d["spec"]["selector"].get("matchLabels"), pod.labels)]
        if not budgets:
            self.report(pod.name, "no PodDisruptionBudget selects its pods")
        strategy = spec.get("strategy", {})
        if strategy.get("type") == "Recreate":
            self.report(pod.name, "strategy Recreate stops every replica at once")
        unavailable = strategy.get("rollingUpdate", {}).get("maxUnavailable", "25%")
        for budget in budgets:
            floor = budget["spec"].get("minAvailable", 0)
            if not isinstance(unavailable, int) or pod.replicas - unavailable < floor:
                self.report(pod.name, f"rollingUpdate.maxUnavailable {unavailable} goes below PodDisruptionBudget "
                                      f"{budget['metadata']['name']}'s minAvailable {floor}")
            if not isinstance(floor, int) or floor >= pod.replicas:
                self.report(pod.name, f"PodDisruptionBudget minAvailable {floor} leaves no pod evictable")

    def idgate(self, pod: Pod, container: dict[str, Any], where: str) -> None:
        self.locked_down(pod, container, where)
        entrypoint, workdir = image_entrypoint()
        argv = container.get("command", entrypoint) + container.get("args", [])
        # argparse keeps the last --config; without one, `idgate serve` reads idgate.yaml in its directory.
        config_path = PurePosixPath(([v for k, v in zip(argv, argv[1:]) if k == "--config"] or ["idgate.yaml"])[-1])
        if not config_path.is_absolute():
            config_path = PurePosixPath(container.get("workingDir", workdir)) / config_path
        text = self.held_in_config_map(pod, container, config_path, where)
        if text is None:
            return
        root = self.tmp / pod.name.replace("/", "-") / container["name"]
        local = root / config_path.relative_to("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(text)
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        try:
            config = load_config(local, env, offline=True)
        except ConfigError as exc:
            self.problems += [f"{where}: {config_path}: {p.message} (line {p.line})" for p in exc.problems]
            return

        def in_container(path: Path) -> PurePosixPath:
            if path.is_relative_to(root):
                return PurePosixPath("/") / path.relative_to(root).as_posix()
            return PurePosixPath(container.get("workingDir", workdir)) / path.as_posix()

        self.policies(pod, container, config, in_container(config.policies_dir), root, where)
        self.files(pod, container, config, in_container, where)
        self.ports(pod, container, config, where)
        if pod.replicas > 1:
            instance = [e for e in container.get("env", []) if e["name"] == ENV_AUDIT_INSTANCE]
            if [e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in instance] != ["metadata.name"]:
                self.report(where, f"{ENV_AUDIT_INSTANCE} must come from metadata.name (the downward API): "
                                   "the replicas would write one audit instance")
        if pod.kind == "Deployment":
            self.resources_and_grace(pod, container, config, where)

    def locked_down(self, pod: Pod, container: dict[str, Any], where: str) -> None:
        pod_context, context = pod.spec.get("securityContext", {}), container.get("securityContext", {})
        effective = {**pod_context, **context}
        if effective.get("runAsNonRoot") is not True or effective.get("runAsUser") == 0:
            self.report(where, "runAsNonRoot must be true")
        if context.get("readOnlyRootFilesystem") is not True:
            self.report(where, "readOnlyRootFilesystem must be true")
        if context.get("allowPrivilegeEscalation") is not False:
            self.report(where, "allowPrivilegeEscalation must be false")
        if "ALL" not in context.get("capabilities", {}).get("drop", []) or context.get("capabilities", {}).get("add"):
            self.report(where, "capabilities must drop ALL and add none")
        if effective.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            self.report(where, "seccompProfile must be RuntimeDefault")

    def held_in_config_map(self, pod: Pod, container: dict[str, Any], path: PurePosixPath, where: str) -> str | None:
        found = pod.mounted(container, path)
        if found is None or "configMap" not in found[1]:
            self.report(where, f"{path} is not mounted from a ConfigMap")
            return None
        data = self.config_maps.get(found[1]["configMap"]["name"], {})
        if found[2] not in data:
            self.report(where, f"{path}: no key {found[2]} in ConfigMap {found[1]['configMap']['name']}")
            return None
        return str(data[found[2]])

    def policies(self, pod: Pod, container: dict[str, Any], config: Config, path: PurePosixPath, root: Path,
                 where: str) -> None:
        found = pod.mounted(container, path)
        if found is None or "configMap" not in found[1] or found[2]:
            self.report(where, f"policies_dir {path} is not a ConfigMap mounted as a directory")
            return
        if found[1]["configMap"]["name"] not in self.config_maps:
            return                        # reported with the pod's volumes
        directory = root / "policies"
        directory.mkdir()
        for name, text in self.config_maps[found[1]["configMap"]["name"]].items():
            (directory / name).write_text(text)
        try:
            policy = compile_directory(directory)
        except ConfigError as exc:
            self.problems += [f"{where}: policies: {PurePosixPath(p.file).name}: {p.message} (line {p.line})"
                              for p in exc.problems]
            return
        trusted = {issuer.issuer for issuer in config.issuers}
        named = {issuer for rule in policy.rules for issuer in rule.who.issuers}
        for rule in policy.rules:
            for issuer in sorted(set(rule.who.issuers) - trusted):
                self.report(where, f"rule {rule.id} names issuer {issuer} the config does not trust")
        for issuer in sorted(trusted - named):
            self.report(where, f"issuer {issuer} is trusted but no rule names it")

    def files(self, pod: Pod, container: dict[str, Any], config: Config,
              in_container: Callable[[Path], PurePosixPath], where: str) -> None:
        """Every file the config names lies in a mounted volume (a key of its ConfigMap or Secret); the audit
        and its shipping state on a writable one (the root file system is read-only)."""
        for name, local in config_paths(config):
            if name == "policies_dir":
                continue                  # a ConfigMap directory: self.policies
            path = in_container(local)
            written = name in ("audit.path", "audit.shipping.state_dir")   # the default state_dir: beside the audit
            found = pod.mounted(container, path.parent if name == "audit.path" else path)
            if found is None:
                self.report(where, f"{name} {path} is on no mounted volume")
                continue
            mount, volume, key = found
            if written and (not any(kind in volume for kind in WRITABLE_VOLUMES) or mount.get("readOnly")):
                self.report(where, f"{name} {path} is not on a writable volume")
            elif "secret" in volume and key not in self.secrets.get(volume["secret"]["secretName"], set()):
                self.report(where, f"{name} {path}: no key {key} in Secret {volume['secret']['secretName']}")
            elif "configMap" in volume and key not in self.config_maps.get(volume["configMap"]["name"], {}):
                self.report(where, f"{name} {path}: no key {key} in ConfigMap {volume['configMap']['name']}")

    def ports(self, pod: Pod, container: dict[str, Any], config: Config, where: str) -> None:
        listeners = {"listen": (config.listen.host, config.listen.port),
                     "admin": (config.admin.host, config.admin.port)}
        if config.ext_authz.grpc is not None:
            listeners["ext_authz.grpc"] = (config.ext_authz.grpc.host, config.ext_authz.grpc.port)
        exposed = {p["containerPort"] for p in container.get("ports", [])}
        for port in sorted(exposed - {port for _, port in listeners.values()}):
            self.report(where, f"containerPort {port} is no listener of the config")
        for key, (host, port) in listeners.items():
            if not is_loopback(host) and port not in exposed:
                self.report(where, f"{key} port {port} has no containerPort")
            elif is_loopback(host) and port in exposed:
                self.report(where, f"containerPort {port}: {key} listens on {host}, out of reach from outside the pod")
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = container.get(probe, {}).get("httpGet")
            if get is None or get["path"] != path or get.get("scheme", "HTTP") != "HTTP":
                self.report(where, f"{probe} must GET {path} over HTTP")
                continue
            port = self.port_number(container, get["port"])
            if port != config.admin.port or is_loopback(config.admin.host):
                self.report(where, f"{probe} probes port {get['port']}, not the admin listener "
                                   f"({config.admin.host}:{config.admin.port}) the kubelet can reach")

    @staticmethod
    def port_number(container: dict[str, Any], port: int | str) -> int | None:
        if isinstance(port, int):
            return port
        return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)

    def resources_and_grace(self, pod: Pod, container: dict[str, Any], config: Config, where: str) -> None:
        pause = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        needed = DRAIN_SECONDS + (CLOSE_TIMEOUT if config.audit.shipping else 0) + pause
        grace = pod.spec.get("terminationGracePeriodSeconds", 30)
        if grace < needed:
            self.report(where, f"terminationGracePeriodSeconds {grace} < {needed:g}: idgate is killed while draining")
        for resource in ("cpu", "memory"):
            if resource not in container.get("resources", {}).get("requests", {}):
                self.report(where, f"resources.requests.{resource} missing")
        if "memory" not in container.get("resources", {}).get("limits", {}):
            self.report(where, "resources.limits.memory missing")

    def service(self, doc: dict[str, Any]) -> None:
        where = f"Service/{doc['metadata']['name']}"
        pods = [pod for pod in self.pods if selects(doc["spec"].get("selector"), pod.labels)]
        if not pods:
            self.report(where, "selects no pod of the file")
        for port in doc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if not any(target in (p["containerPort"], p.get("name")) for pod in pods for p in pod.container_ports()):
                self.report(where, f"targetPort {target} is no containerPort of the pods it selects")

    def budget(self, doc: dict[str, Any]) -> None:
        if not any(selects(doc["spec"]["selector"].get("matchLabels"), pod.labels) for pod in self.pods):
            self.report(f"PodDisruptionBudget/{doc['metadata']['name']}", "selects no pod of the file")


def config_paths(value: Any, where: str = "") -> Iterator[tuple[str, Path]]:
    """Every file or directory a Config names, whatever section it is in (a key added later is covered)."""
    if is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            if f.name != "source":
                yield from config_paths(getattr(value, f.name), f"{where}.{f.name}".lstrip("."))
    elif isinstance(value, tuple):
        for i, item in enumerate(value):
            yield from config_paths(item, f"{where}[{i}]")
    elif isinstance(value, Path):
        yield where, value


def check(text: str, docs: list[dict[str, Any]], tmp: Path) -> list[str]:
    return Check(text, docs, tmp).run()


def load(path: Path) -> tuple[str, list[dict[str, Any]]]:
    text = path.read_text()
    return text, [d for d in yaml.safe_load_all(text) if d]


def test_every_manifest_is_found() -> None:
    assert {p.name for p in manifests()} >= {"idgate-sidecar.yaml", "idgate-standalone.yaml"}
    assert KUBERNETES_VERSION in kubernetes_validate.utils.all_versions()


@pytest.mark.parametrize("manifest", manifests(), ids=lambda p: p.name)
def test_manifest_is_schema_valid_and_consistent(manifest: Path, tmp_path: Path) -> None:
    text, docs = load(manifest)
    assert docs
    assert check(text, docs, tmp_path) == []


# --- each check can fail: a copy of the standalone manifest, broken one way, is reported for that way ---

STANDALONE = KUBERNETES / "idgate-standalone.yaml"


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return Pod(find(docs, "Deployment", "idgate")).spec


def idgate_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = [c for c in pod_spec(docs)["containers"] if c["name"] == "idgate"]
    [container] = containers
    return container


def edit(docs: list[dict[str, Any]], config_map: str, key: str, old: str, new: str) -> None:
    data = find(docs, "ConfigMap", config_map)["data"]
    assert old in data[key]         # the mutation must change something, or the test proves nothing
    data[key] = data[key].replace(old, new)


def remove_volume(docs: list[dict[str, Any]], name: str) -> None:
    pod_spec(docs)["volumes"] = [v for v in pod_spec(docs)["volumes"] if v["name"] != name]


def set_in(docs: list[dict[str, Any]], path: str, value: Any) -> None:
    """Set a dotted path below the idgate container (`container.`), its pod spec (`pod.`) or a document."""
    scope, *keys, last = path.split(".")
    scopes = {"container": idgate_container(docs), "pod": pod_spec(docs)}
    target: Any = scopes[scope] if scope in scopes else find(docs, *scope.split("/"))
    for key in keys:
        target = target[int(key)] if isinstance(target, list) else target.setdefault(key, {})
    if value is None:
        del target[last]
    else:
        target[last] = value


Mutation = Callable[[list[dict[str, Any]]], None]
MUTATIONS: list[tuple[str, Mutation, str]] = [
    ("unknown field", lambda d: set_in(d, "container.colour", "blue"),
     "schema: spec.template.spec.containers.0: Additional properties are not allowed ('colour' was unexpected)"),
    ("wrong type", lambda d: set_in(d, "Deployment/idgate.spec.replicas", "2"), "schema: spec.replicas: '2' is not"),
    ("probe on the main port", lambda d: set_in(d, "container.readinessProbe.httpGet.port", "https"),
     "readinessProbe probes port https, not the admin listener (0.0.0.0:9090)"),
    ("liveness on readyz", lambda d: set_in(d, "container.livenessProbe.httpGet.path", "/readyz"),
     "livenessProbe must GET /healthz over HTTP"),
    ("admin on loopback", lambda d: edit(d, "idgate-config", "idgate.yaml", "admin: {host: 0.0.0.0",
                                         "admin: {host: 127.0.0.1"), "not the admin listener (127.0.0.1:9090)"),
    ("containerPort on a loopback listener",
     lambda d: edit(d, "idgate-config", "idgate.yaml", "  host: 0.0.0.0\n  port: 8443",
                    "  host: 127.0.0.1\n  port: 8443"),
     "containerPort 8443: listen listens on 127.0.0.1, out of reach from outside the pod"),
    ("containerPort not the config's", lambda d: set_in(d, "container.ports.0.containerPort", 8080),
     "containerPort 8080 is no listener of the config"),
    ("listener without containerPort",
     lambda d: set_in(d, "container.ports", [{"name": "admin", "containerPort": 9090}]),
     "listen port 8443 has no containerPort"),
    ("Service targets a missing port", lambda d: set_in(d, "Service/idgate.spec.ports.0.targetPort", "http"),
     "Service/idgate: targetPort http is no containerPort"),
    ("Service selects nothing", lambda d: set_in(d, "Service/idgate.spec.selector", {"app": "orders"}),
     "Service/idgate: selects no pod"),
    ("PDB selects nothing", lambda d: set_in(d, "PodDisruptionBudget/idgate.spec.selector.matchLabels",
                                             {"app": "orders"}), "PodDisruptionBudget/idgate: selects no pod"),
    ("rollout below the PDB", lambda d: set_in(d, "Deployment/idgate.spec.strategy.rollingUpdate.maxUnavailable", 2),
     "maxUnavailable 2 goes below PodDisruptionBudget idgate's minAvailable 1"),
    ("PDB blocks every eviction", lambda d: set_in(d, "PodDisruptionBudget/idgate.spec.minAvailable", 2),
     "PodDisruptionBudget minAvailable 2 leaves no pod evictable"),
    ("Deployment selects other pods", lambda d: set_in(d, "Deployment/idgate.spec.selector.matchLabels", {"app": "x"}),
     "Deployment/idgate: selector does not match the pod template's labels"),
    ("Recreate", lambda d: set_in(d, "Deployment/idgate.spec.strategy", {"type": "Recreate"}),
     "strategy Recreate stops every replica at once"),
    ("no idgate container", lambda d: set_in(d, "container.image", "registry.example.com/proxy:1.0"),
     "manifest: no idgate container"),
    ("one replica", lambda d: set_in(d, "Deployment/idgate.spec.replicas", 1), "replicas 1"),
    ("no spreading", lambda d: set_in(d, "pod.topologySpreadConstraints", None), "no topologySpreadConstraints"),
    ("missing volume", lambda d: remove_volume(d, "tls"), "volumeMount 'tls' names no volume"),
    ("missing ConfigMap", lambda d: set_in(d, "pod.volumes.1.configMap.name", "idgate-rules"),
     "no ConfigMap idgate-rules in the file"),
    ("undocumented Secret", lambda d: set_in(d, "pod.volumes.2.secret.secretName", "idgate-tls-2026"),
     "Secret idgate-tls-2026 is neither in the file nor in its `kubectl create secret` comments"),
    ("key file not in its Secret", lambda d: edit(d, "idgate-config", "idgate.yaml", "/etc/idgate/assertion/key.pem",
                                                  "/etc/idgate/assertion/assertion-key.pem"),
     "assertion.key_file /etc/idgate/assertion/assertion-key.pem: no key assertion-key.pem in Secret "
     "idgate-assertion-key"),
    ("key file on no volume", lambda d: edit(d, "idgate-config", "idgate.yaml", "/etc/idgate/tls/tls.key",
                                             "/etc/ssl/private/tls.key"),
     "listen.tls.key_file /etc/ssl/private/tls.key is on no mounted volume"),
    ("audit on the read-only root", lambda d: edit(d, "idgate-config", "idgate.yaml", "/var/lib/idgate/audit/audit",
                                                   "/var/lib/idgate/audit"),
     "audit.path /var/lib/idgate/audit.jsonl is on no mounted volume"),
    ("audit on a read-only mount", lambda d: set_in(d, "container.volumeMounts.5.readOnly", True),
     "audit.path /var/lib/idgate/audit/audit.jsonl is not on a writable volume"),
    ("config not mounted", lambda d: set_in(d, "container.args", ["--config", "/etc/idgate/config.yaml"]),
     "/etc/idgate/config.yaml is not mounted from a ConfigMap"),
    ("config does not decode", lambda d: edit(d, "idgate-config", "idgate.yaml", "\npolicies_dir:",
                                              "\ncolour: blue\npolicies_dir:"), "colour: unknown key"),
    ("policy does not load", lambda d: edit(d, "idgate-policies", "reports.yaml", '"/v1/reports/**"', "reports"),
     "policies: reports.yaml:"),
    ("policy names an untrusted issuer", lambda d: edit(d, "idgate-policies", "orders.yaml",
                                                        "issuer: https://login.example.com",
                                                        "issuer: http://127.0.0.1:9400"),
     "rule etl-read-orders names issuer http://127.0.0.1:9400 the config does not trust"),
    ("config trusts an issuer no rule names", lambda d: edit(d, "idgate-config", "idgate.yaml", "\npolicies_dir:",
                                                             "\n  - {issuer: https://sso.example.com, audiences: "
                                                             "[orders-api]}\npolicies_dir:"),
     "issuer https://sso.example.com is trusted but no rule names it"),
    ("privileged", lambda d: set_in(d, "container.securityContext.privileged", True), "container idgate: privileged"),
    ("runs as root", lambda d: set_in(d, "pod.securityContext.runAsNonRoot", False), "runAsNonRoot must be true"),
    ("writable root", lambda d: set_in(d, "container.securityContext.readOnlyRootFilesystem", False),
     "readOnlyRootFilesystem must be true"),
    ("privilege escalation", lambda d: set_in(d, "container.securityContext.allowPrivilegeEscalation", None),
     "allowPrivilegeEscalation must be false"),
    ("capabilities kept", lambda d: set_in(d, "container.securityContext.capabilities", {"add": ["NET_ADMIN"]}),
     "capabilities must drop ALL and add none"),
    ("no seccomp", lambda d: set_in(d, "pod.securityContext.seccompProfile", None),
     "seccompProfile must be RuntimeDefault"),
    ("one audit instance for all replicas", lambda d: set_in(d, "container.env", None),
     f"{ENV_AUDIT_INSTANCE} must come from metadata.name"),
    ("killed while draining", lambda d: set_in(d, "pod.terminationGracePeriodSeconds", 30),
     "terminationGracePeriodSeconds 30 < 75"),
    ("no memory limit", lambda d: set_in(d, "container.resources.limits", None), "resources.limits.memory missing"),
]


@pytest.mark.parametrize(("mutate", "expected"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_each_check_reports_what_breaks_it(mutate: Mutation, expected: str, tmp_path: Path) -> None:
    text, docs = load(STANDALONE)
    docs = copy.deepcopy(docs)
    mutate(docs)
    problems = check(text, docs, tmp_path)
    assert any(expected in p for p in problems), problems
