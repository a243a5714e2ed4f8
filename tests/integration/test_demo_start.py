"""`idgate demo` started while another demo (or anything else) holds one of its fixed loopback ports: one line
naming the port and the fix, before anything is started (a second demo used to reach the first one's moto
and end in an EntityAlreadyExists traceback)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.dev.demo import ADMIN_PORT, AWS_PORT, ISSUER_PORT, PROXY_PORT, UPSTREAM_PORT
from tests.harness.processes import HOST

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("port", "name"), [(AWS_PORT, "local AWS"), (PROXY_PORT, "idgate"),
                                            (ISSUER_PORT, "development issuer"), (UPSTREAM_PORT, "echo upstream"),
                                            (ADMIN_PORT, "idgate admin")])
def test_a_second_demo_is_one_line_naming_the_taken_port(tmp_path: Path, port: int, name: str) -> None:
    workdir = tmp_path / "demo"
    with socket.create_server((HOST, port)):             # what the first demo holds
        done = subprocess.run([sys.executable, "-m", "proxy", "demo", "--workdir", str(workdir),
                               "--policies", str(REPO / "policies")], capture_output=True, text=True, timeout=60,
                              check=False, cwd=REPO)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"idgate: the demo's {name} port {HOST}:{port} is taken (Address already in use): another `make demo` "
        "is probably running; stop it (Ctrl-C in its terminal) or free the port")
    assert not (workdir / "moto.log").exists()            # nothing was started
