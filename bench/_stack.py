"""Shared benchmark plumbing: start servers as separate processes (the tests' harness processes) on free
loopback ports, poll them ready, write an idgate config with a generated 100-rule policy, read what
/proc says about a process, run wrk and parse what it prints."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness.processes import HOST, ProcessGroup, ServerProcess, ServerUrls, free_port

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
SERVERS = (sys.executable, "-m", "bench._servers")   # run from the repository root (cwd below)
AUDIENCE = "bench-api"
BENCH_SUBJECT = "svc-etl-7"          # a DevIssuer demo identity: groups [data-eng], tenant acme
PROXY_HOST = "orders.internal"
STREAM_HOST = "stream.internal"
PROXY_PATH = "/v1/orders/7"


def server_group(workdir: Path) -> ProcessGroup:
    """The benchmark's servers, logging into `workdir` and started from the repository root (which
    `python -m bench._servers` needs)."""
    return ProcessGroup(workdir, cwd=REPO)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Make SIGTERM unwind like Ctrl-C so every `finally` that stops servers runs."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_code(main: Callable[[], int]) -> int:
    """Run a benchmark's main; Ctrl-C ends it quietly (its `finally` blocks have stopped the servers)."""
    try:
        return main()
    except KeyboardInterrupt:
        print(f"{Path(sys.argv[0]).name}: interrupted; its servers are stopped", file=sys.stderr)
        return 130


@contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()


def wait_ready(proc: ServerProcess, url: str, ok: Sequence[int] = (200,)) -> None:
    """Poll `url` until it answers one of `ok`; fail early, with the server's log tail, if it exits."""
    def answered() -> bool | None:
        status, _ = http_get(url, timeout=1.0)
        return True if status in ok else None
    proc.wait_until(answered, f"ready at {url}")


def start_echo(procs: ProcessGroup, name: str, loop: str = "asyncio") -> tuple[ServerProcess, int]:
    """The bare aiohttp handler (also the benchmarks' fast upstream) on `loop`: asyncio or uvloop."""
    port = free_port()
    proc = procs.start(name, [*SERVERS, "echo", str(port), loop])
    wait_ready(proc, f"http://{HOST}:{port}/")
    return proc, port


def start_issuer(procs: ProcessGroup) -> tuple[ServerProcess, str]:
    port = free_port()
    proc = procs.start("issuer", [*SERVERS, "issuer", str(port), AUDIENCE])
    url = f"http://{HOST}:{port}"
    wait_ready(proc, url + "/.well-known/openid-configuration")
    return proc, url


def mint_token(issuer_url: str) -> str:
    status, body = http_get(f"{issuer_url}/token?sub={BENCH_SUBJECT}")
    if status != 200:
        raise RuntimeError(f"dev issuer would not mint a token (HTTP {status})")
    return body.decode().strip()


# -- idgate -------------------------------------------------------------------------------------


def write_policies(directory: Path, issuer: str, count: int = 100, seed: int = 11) -> int:
    """`count` rules over varied hosts, subjects and groups, including the rules that allow the bench
    identity; several share orders.internal so the decision is not a trivial single-rule lookup."""
    rng = random.Random(seed)
    methods = ["GET", "HEAD", "POST", "PUT", "DELETE"]
    resources = ["orders", "invoices", "users", "items", "reports", "events"]
    rules: list[dict[str, Any]] = [
        {"id": "nobody-touches-admin", "effect": "deny", "who": {"any": True},
         "http": [{"paths": ["/admin", "/admin/**"]}]},
        {"id": "bench-read-orders",
         "who": {"issuer": issuer, "subject": ["svc-etl-*"], "groups": ["data-eng"], "claims": {"tenant": "acme"}},
         "http": [{"hosts": [PROXY_HOST], "methods": ["GET", "HEAD"], "paths": ["/v1/orders", "/v1/orders/**"]}]},
        {"id": "bench-stream",
         "who": {"issuer": issuer, "subject": [BENCH_SUBJECT]},
         "http": [{"hosts": [STREAM_HOST], "methods": ["GET", "POST"], "paths": ["/**"]}]},
    ]
    while len(rules) < count:
        n = len(rules)
        kind = rng.random()
        if kind < 0.4:
            who: dict[str, Any] = {"issuer": issuer, "subject": [f"svc-team{rng.randrange(40)}-*"]}
        elif kind < 0.7:
            who = {"issuer": issuer, "groups": [f"group-{rng.randrange(30)}"]}
        elif kind < 0.9:
            who = {"issuer": issuer, "subject": [f"svc-team{rng.randrange(40)}-{i}" for i in range(3)],
                   "groups": [f"group-{rng.randrange(30)}"]}
        else:
            who = {"issuer": issuer, "groups": ["data-eng"], "claims": {"tenant": f"tenant-{rng.randrange(10)}"}}
        host = PROXY_HOST if rng.random() < 0.2 else f"svc-{rng.randrange(60)}.internal"
        resource = rng.choice(resources)
        rule: dict[str, Any] = {
            "id": f"generated-{n}",
            "who": who,
            "http": [{"hosts": [host], "methods": rng.sample(methods, rng.randint(1, 3)),
                      "paths": [f"/v{rng.randint(1, 2)}/{resource}", f"/v{rng.randint(1, 2)}/{resource}/**"]}],
        }
        if rng.random() < 0.05:
            rule["effect"] = "deny"
            rule["http"][0]["paths"] = [f"/internal/{resource}/**"]
        rules.append(rule)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bench.yaml").write_text(yaml.safe_dump({"rules": rules}, sort_keys=False))
    return len(rules)


@dataclass
class Idgate(ServerUrls):
    proc: ServerProcess
    port: int
    admin_port: int
    audit_path: Path
    grpc_port: int | None = None     # the gRPC ext_authz listener, when asked for


def start_idgate(procs: ProcessGroup, workdir: Path, issuer_url: str, upstream_port: int, *,
                 name: str = "idgate", rules: int = 100, audit: dict[str, Any] | None = None,
                 limits: dict[str, Any] | None = None, loop: str = "asyncio", workers: int = 1,
                 ext_authz: bool = False, tracing: dict[str, Any] | None = None,
                 source: Path | None = None, wrapper: Sequence[str] = (), startup_timeout: float = 30.0) -> Idgate:
    """`idgate serve --loop LOOP --workers N` with audit on, fsync true unless `audit` overrides it, forward
    auth for loopback and, with `ext_authz`, Envoy's HTTP and gRPC ext_authz surfaces; with `tracing`, that
    `tracing:` section; with `source`, idgate's code from that checkout instead of this one (a build to compare
    with); run under `wrapper` (a command prefix: valgrind), ready within `startup_timeout`.  Fails unless
    idgate reports serving on `loop`: a row's label must say what ran."""
    home = workdir / name
    policies = home / "policies"
    write_policies(policies, issuer_url, rules)
    port, admin_port = free_port(), free_port()
    grpc_port = free_port() if ext_authz else None
    upstream = f"http://{HOST}:{upstream_port}"
    audit_path = home / "audit" / "audit.jsonl"
    config: dict[str, Any] = {
        "listen": {"host": HOST, "port": port},
        "admin": {"host": HOST, "port": admin_port},
        "issuers": [{"issuer": issuer_url, "audiences": [AUDIENCE], "require_typ": "at+jwt"}],
        "policies_dir": str(policies),
        "trusted_proxies": [f"{HOST}/32"],
        "routes": [
            {"name": "orders", "upstream": upstream, "hosts": [PROXY_HOST]},
            {"name": "stream", "upstream": upstream, "hosts": [STREAM_HOST],
             "max_body_bytes": 4 * 1024 ** 3, "read_timeout": 600},
        ],
        "audit": {"path": str(audit_path), "fsync": True, **(audit or {})},
        **({"limits": limits} if limits else {}),
        **({"ext_authz": {"http": {}, "grpc": {"host": HOST, "port": grpc_port}}} if ext_authz else {}),
        **({"tracing": tracing} if tracing is not None else {}),
    }
    config_path = home / "idgate.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    cli = [sys.executable, "-m", "proxy"] if source is None else [
        sys.executable, "-c", f"import sys; sys.path.insert(0, {str(source)!r}); from proxy.cli import main; "
                              "sys.exit(main(sys.argv[1:]))"]
    proc = procs.start(name, [*wrapper, *cli, "serve", "--config", str(config_path),
                              "--log-level", "warning", "--loop", loop, "--workers", str(workers)],
                       startup_timeout=startup_timeout)
    idgate = Idgate(proc, port, admin_port, audit_path, grpc_port)
    wait_ready(proc, idgate.admin_url + "/readyz")
    serving_on = metric_values(idgate.admin_url).get(f'idgate_event_loop_info{{loop="{loop}"}}')
    if serving_on != 1.0:
        raise RuntimeError(f"{name}: asked for --loop {loop}, but idgate does not report serving on it")
    return idgate


def audit_stats(idgate: Idgate) -> dict[str, Any]:
    """What idgate's audit did during the sitting: records on disk, fsyncs, records per fsync, failures,
    and the token cache (every request presents the same token, so all but one should be hits)."""
    metrics = metric_values(idgate.admin_url)
    batches = metrics.get("idgate_audit_batch_records_count", 0.0)
    records = metrics.get("idgate_audit_batch_records_sum", 0.0)
    with open(idgate.audit_path, "rb") as f:
        lines = sum(1 for _ in f)
    return {
        "fsync": True,
        "records_on_disk": lines,
        "fsync_batches": int(batches),
        "mean_records_per_fsync": round(records / batches, 1) if batches else None,
        "failures": metrics.get("idgate_audit_failures_total", 0.0),
        "token_cache_hits": metrics.get('idgate_token_cache_total{result="hit"}', 0.0),
        "token_cache_misses": metrics.get('idgate_token_cache_total{result="miss"}', 0.0),
    }


def metric_values(admin_url: str) -> dict[str, float]:
    """Unlabelled sample values from idgate's /metrics (name → value; labelled samples keep their labels)."""
    _, body = http_get(admin_url + "/metrics")
    values: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                values[name] = float(value)
            except ValueError:
                continue
    return values


# -- /proc --------------------------------------------------------------------------------------


def proc_status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0, `echo 5 > clear_refs`); False if not permitted."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    """`pid`'s child processes, theirs, and so on (from /proc/*/stat: this kernel has no task/*/children)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (the workers of `idgate serve --workers N`)."""
    return [pid, *_descendants(pid)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and its live descendants."""
    total = 0
    for process in process_tree(pid):
        try:
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


# -- wrk ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkSettings:
    threads: int = 1
    connections: int = 32
    duration: int = 10
    warmup: int = 2
    cores: frozenset[int] | None = None    # the CPUs wrk runs on; None: this process's


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"requests_per_s": self.requests_per_s, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
                "requests": self.requests, "non_2xx": self.non_2xx, "socket_errors": self.socket_errors}


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return float(match[1]) * _UNITS_MS[match[2]]


def parse_wrk(output: str) -> WrkResult:
    """Requests/sec, the 50% and 99% lines of `--latency`, the request count and error lines."""
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk output has no match for {pattern!r}:\n{output}")
        return match

    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output)
    errors = re.search(r"Socket errors:\s*(.+)$", output, re.MULTILINE)
    return WrkResult(
        requests_per_s=float(find(r"^Requests/sec:\s*([0-9.]+)")[1]),
        p50_ms=_duration_ms(find(r"^\s*50%\s+(\S+)")[1]),
        p99_ms=_duration_ms(find(r"^\s*99%\s+(\S+)")[1]),
        requests=int(find(r"^\s*(\d+) requests in")[1]),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=errors[1].strip() if errors else None,
    )


def wrk_path() -> str | None:
    return shutil.which("wrk")


def _wrk_command(url: str, headers: dict[str, str], settings: WrkSettings, seconds: int) -> list[str]:
    wrk = wrk_path()
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    command = [wrk, f"-t{settings.threads}", f"-c{settings.connections}", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    return [*command, url]


def _wrk(url: str, headers: dict[str, str], settings: WrkSettings, seconds: int) -> str:
    cores = settings.cores
    done = subprocess.run(_wrk_command(url, headers, settings, seconds), check=True, capture_output=True, text=True,
                          preexec_fn=None if cores is None else lambda: os.sched_setaffinity(0, cores))
    return done.stdout


def warm_up(url: str, headers: dict[str, str], settings: WrkSettings) -> None:
    """A discarded run with the same settings: fills caches and connection pools."""
    if settings.warmup:
        _wrk(url, headers, settings, settings.warmup)


def run_wrk(url: str, headers: dict[str, str], settings: WrkSettings) -> WrkResult:
    return parse_wrk(_wrk(url, headers, settings, settings.duration))


def measured_and_written(name: str, measure: Callable[[], dict[str, Any]]) -> int:
    """A benchmark's main: the machine's state at the start, the sitting (SIGTERM stops it cleanly),
    and its JSON written under bench/results/."""
    from bench._sitting import machine, stamped

    at_start = machine()
    with sigterm_as_interrupt():
        result = measure()
    print(f"wrote {write_result(name, stamped(result, at_start))}")
    return 0


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
