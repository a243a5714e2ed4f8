"""Instructions per proxied request, counted by callgrind (Debian's valgrind): an idgate started for the
purpose under valgrind, warmed up, then `requests` sequential keep-alive requests counted (every thread),
nothing else.  A neighbour's load moves req/s and CPU time, never this count (two counts of one build
agree within 0.05 %), so it resolves the 1 % that wrk on a shared machine cannot.  Sequential requests
batch nothing (one fsync each), and time-driven work counts per second of a run valgrind slows some 50
times: the export thread's one batch a second makes a sampled row's count an upper bound."""

from __future__ import annotations

import http.client
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from bench._stack import PROXY_PATH, Idgate

WARMUP = 100
STARTUP_TIMEOUT = 600.0         # importing idgate under valgrind takes a minute or more


def callgrind_tools() -> tuple[str, str] | None:
    valgrind, control = shutil.which("valgrind"), shutil.which("callgrind_control")
    return (valgrind, control) if valgrind and control else None


def _requests(port: int, headers: dict[str, str], count: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        for _ in range(count):
            connection.request("GET", PROXY_PATH, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"the counted requests must be allowed: HTTP {response.status}")
    finally:
        connection.close()


def _totals(dump: Path) -> int | None:
    """The dump's instruction count, None while callgrind is still writing it."""
    for line in dump.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    return None


def instructions_per_request(start: Callable[[list[str], float], Idgate], headers: dict[str, str], requests: int,
                             out: Path) -> float:
    """Thousands of instructions per request of the idgate `start(wrapper, startup_timeout)` starts (and the
    caller stops); callgrind writes its counts under `out` (a file name prefix)."""
    tools = callgrind_tools()
    if tools is None:
        raise RuntimeError("valgrind is not installed (apt-get install valgrind)")
    valgrind, control = tools
    out.parent.mkdir(parents=True, exist_ok=True)
    idgate = start([valgrind, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"],
                   STARTUP_TIMEOUT)
    pid = str(idgate.proc.pid)
    _requests(idgate.port, headers, WARMUP)
    subprocess.run([control, "--instr=on", pid], check=True, capture_output=True)
    _requests(idgate.port, headers, requests)
    subprocess.run([control, "--instr=off", pid], check=True, capture_output=True)
    subprocess.run([control, "--dump", pid], check=True, capture_output=True)
    # --dump writes `out`.1 (`out` itself comes at exit, empty); poll for it, as for any server's answer.
    dump = out.with_name(out.name + ".1")
    return round(idgate.proc.wait_until(lambda: _totals(dump) if dump.exists() else None, "dumped its counts")
                 / requests / 1e3, 1)
