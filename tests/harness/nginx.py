"""Real nginx (Debian nginx-light, installed by `make test`) running the shipped deploy/nginx config,
rendered onto loopback ports in front of a path-resolving upstream, one process per test, always stopped."""

from __future__ import annotations

import os
import re
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.harness.processes import ServerProcess

REPO = Path(__file__).resolve().parents[2]
DEPLOY_NGINX = REPO / "deploy" / "nginx" / "idgate-forward-auth.conf"
HOST = "127.0.0.1"


class NginxError(RuntimeError):
    pass


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        raise NginxError("no nginx binary: run `make test` (it installs Debian's nginx-light)")
    return found


def render(config: str, *, listen_port: int, idgate_port: int, backend_port: int) -> str:
    """The shipped config on loopback and plain http: the listen, idgate and backend addresses change,
    TLS lines go; every location, header and pin stays exactly as shipped."""
    lines = []
    for line in config.splitlines():
        stripped = line.strip()
        if stripped.startswith(("ssl_certificate", "proxy_ssl_")):
            continue
        lines.append(line)
    text = "\n".join(lines) + "\n"
    text, listens = re.subn(r"listen 443 ssl( default_server)?;", rf"listen {HOST}:{listen_port}\1;", text)
    text, idgates = re.subn(r"server idgate\.internal:8443;", f"server {HOST}:{idgate_port};", text)
    text, backends = re.subn(r"server 10\.0\.0\.21:8080;", f"server {HOST}:{backend_port};", text)
    text, schemes = re.subn(r"proxy_pass\s+https://idgate_forward_auth/", "proxy_pass http://idgate_forward_auth/", text)
    assert (listens, idgates, backends, schemes) == (2, 1, 1, 1), "the shipped nginx config changed shape"
    return text


def _main_config(prefix: Path, http_block: str) -> str:
    # master_process off: one foreground process that never switches user, started and stopped by the test.
    return (f"daemon off;\nmaster_process off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n"
            f"error_log {prefix}/error.log info;\nevents {{ worker_connections 256; }}\n"
            f"http {{\n  access_log {prefix}/access.log;\n  client_body_temp_path {prefix}/body;\n"
            f"  proxy_temp_path {prefix}/proxy;\n{http_block}\n}}\n")


@dataclass
class RunningNginx:
    port: int
    prefix: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def _listening(port: int) -> bool | None:
    with socket.create_connection((HOST, port), timeout=0.2):
        return True


@contextmanager
def running_nginx(*, idgate_port: int, backend_port: int, listen_port: int) -> Iterator[RunningNginx]:
    process = ServerProcess("nginx", NginxError)
    try:
        prefix = process.workdir
        config = render(DEPLOY_NGINX.read_text(), listen_port=listen_port, idgate_port=idgate_port,
                        backend_port=backend_port)
        (prefix / "nginx.conf").write_text(_main_config(prefix, config))
        process.start([nginx_binary(), "-p", str(prefix), "-c", str(prefix / "nginx.conf")], env=os.environ)
        process.wait_until(lambda: _listening(listen_port), "listening")
        yield RunningNginx(listen_port, prefix)
    finally:
        process.stop()
