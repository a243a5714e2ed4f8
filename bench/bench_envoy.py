"""Envoy benchmark, in one sitting, Envoy at --concurrency 1 in front of a fast upstream (a second Envoy
answering directly): Envoy alone; Envoy's own jwt_authn + rbac (the native baseline); Envoy + idgate HTTP
ext_authz; Envoy + idgate gRPC ext_authz.  Prints req/s, p99 and each ratio to Envoy alone and to the
native baseline; writes bench/results/envoy.json.

Run: .venv/bin/python -m bench.bench_envoy [--quick] [--connections 32] [--duration 10]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import _profile
from bench._stack import (
    PROXY_HOST, PROXY_PATH, RESULTS, WrkSettings, cpu_seconds, exit_code, http_get, metric_values, mint_token,
    run_wrk, server_group, sigterm_as_interrupt, start_issuer, wait_ready, warm_up, workdir, write_policies,
    write_result, wrk_path,
)
from tests.harness.envoy import envoy_binary, http_connection_manager, load_deploy_config, render
from tests.harness.processes import HOST, ProcessGroup, ServerProcess, free_port

RULES = 100
AUDIENCE = "bench-api"
BODY = b"Hello, World!"
TARGETS = {"http": 0.8, "grpc": 0.6}      # the issue's floor, as a share of jwt_authn + rbac


def _set_hcm(config: dict[str, Any], hcm: dict[str, Any]) -> None:
    listener = config["static_resources"]["listeners"][0]
    listener["filter_chains"][0]["filters"][0]["typed_config"] = hcm


def _on_ports(config: dict[str, Any], port: int, admin_port: int) -> dict[str, Any]:
    config = copy.deepcopy(config)
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = port
    # The access log line per request is the same cost in every row: keep it out of the comparison.
    hcm = http_connection_manager(config)
    hcm.pop("access_log", None)
    _set_hcm(config, hcm)
    return config


def _without_ext_authz(config: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    hcm = http_connection_manager(config)
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_authz"]
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        route.pop("typed_per_filter_config", None)
    _set_hcm(config, hcm)
    config["static_resources"]["clusters"] = [c for c in config["static_resources"]["clusters"] if c["name"] == "app"]
    return config


def _jwt_rbac(config: dict[str, Any], issuer: str, jwks: str) -> dict[str, Any]:
    """Envoy's native equivalent of the rule that allows the bench identity: jwt_authn verifies the token
    (issuer, audience, local JWKS), rbac checks subject, group, claim, host, method and path."""
    config = _without_ext_authz(config)
    hcm = http_connection_manager(config)
    jwt_authn = {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"idp": {
                "issuer": issuer, "audiences": [AUDIENCE], "local_jwks": {"inline_string": jwks},
                "payload_in_metadata": "jwt_payload",
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}],
        },
    }

    def claim(key: str, matcher: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": {"filter": "envoy.filters.http.jwt_authn",
                             "path": [{"key": "jwt_payload"}, {"key": key}], "value": matcher}}

    rbac = {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": {"etl-read-orders": {
                "permissions": [{"and_rules": {"rules": [
                    {"header": {"name": ":authority", "string_match": {"exact": PROXY_HOST}}},
                    {"or_rules": {"rules": [{"header": {"name": ":method", "string_match": {"exact": m}}}
                                            for m in ("GET", "HEAD")]}},
                    {"url_path": {"path": {"prefix": "/v1/orders/"}}},
                ]}}],
                "principals": [{"and_ids": {"ids": [
                    claim("sub", {"string_match": {"prefix": "svc-etl-"}}),
                    claim("groups", {"list_match": {"one_of": {"string_match": {"exact": "data-eng"}}}}),
                    claim("tenant", {"string_match": {"exact": "acme"}}),
                ]}}],
            }}},
        },
    }
    hcm["http_filters"] = [jwt_authn, rbac, *hcm["http_filters"]]
    _set_hcm(config, hcm)
    return config


def _upstream_config(port: int, admin_port: int) -> dict[str, Any]:
    """The fast upstream: Envoy answering every request itself."""
    return {
        "admin": {"address": {"socket_address": {"address": HOST, "port_value": admin_port}}},
        "static_resources": {"listeners": [{
            "name": "upstream",
            "address": {"socket_address": {"address": HOST, "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "upstream",
                    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": BODY.decode()}}},
                    ]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                },
            }]}],
        }]},
    }


@dataclass
class Envoy:
    proc: ServerProcess
    port: int
    admin_port: int


def _start_envoy(procs: ProcessGroup, tmp: Path, name: str, config: dict[str, Any], listen_port: int, admin_port: int) -> Envoy:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = procs.start(name, [str(envoy_binary()), "-c", str(path), "--concurrency", "1", "--disable-hot-restart",
                              "-l", "warning"])
    wait_ready(proc, f"http://{HOST}:{admin_port}/ready")
    return Envoy(proc, listen_port, admin_port)


def _start_idgate(procs: ProcessGroup, tmp: Path, issuer_url: str, upstream_port: int) -> tuple[ServerProcess, int, int, int]:
    home = tmp / "idgate"
    write_policies(home / "policies", issuer_url, RULES)
    port, admin_port, grpc_port = free_port(), free_port(), free_port()
    config = {
        "listen": {"host": HOST, "port": port},
        "admin": {"host": HOST, "port": admin_port},
        "issuers": [{"issuer": issuer_url, "audiences": [AUDIENCE], "require_typ": "at+jwt"}],
        "policies_dir": str(home / "policies"),
        "trusted_proxies": [f"{HOST}/32"],
        "routes": [{"name": "orders", "upstream": f"http://{HOST}:{upstream_port}", "hosts": [PROXY_HOST]}],
        "ext_authz": {"http": {}, "grpc": {"host": HOST, "port": grpc_port}},
        "audit": {"path": str(home / "audit" / "audit.jsonl"), "fsync": True},
    }
    (home / "idgate.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    proc = procs.start("idgate", [sys.executable, "-m", "proxy", "serve", "--config", str(home / "idgate.yaml"),
                                  "--log-level", "warning"])
    wait_ready(proc, f"http://{HOST}:{admin_port}/readyz")
    return proc, port, admin_port, grpc_port


def _measure(name: str, url: str, headers: dict[str, str], settings: WrkSettings, watched: dict[str, ServerProcess],
             profile_dir: Path | None) -> dict[str, Any]:
    status, body = http_get(url, headers)
    if status != 200 or body != BODY:
        raise RuntimeError(f"{name}: expected 200 with the upstream's body, got HTTP {status}: {body[:200]!r}")
    warm_up(url, headers, settings)
    profiler = None
    if profile_dir is not None and "idgate" in watched:
        profiler = _profile.start(watched["idgate"].pid, settings.duration, profile_dir / f"{_slug(name)}.folded")
    before = {key: cpu_seconds(proc.pid) for key, proc in watched.items()}
    started = time.monotonic()
    result = run_wrk(url, headers, settings).as_dict()
    wall = time.monotonic() - started
    if profiler is not None:
        profiler.wait()
    # Cores each process used during the run: ~1.0 is a process that is the bottleneck.
    result["cpu_share"] = {key: round((cpu_seconds(proc.pid) - before[key]) / wall, 2) for key, proc in watched.items()}
    print(f"  {name:<28} {result['requests_per_s']:>9.0f} req/s  p99 {result['p99_ms']:6.2f} ms  cpu {result['cpu_share']}"
          + (f"  NON-2XX {result['non_2xx']}" if result["non_2xx"] else ""), flush=True)
    return result


def run(settings: WrkSettings, profile_dir: Path | None) -> dict[str, Any]:
    with workdir("idgate-bench-envoy-") as tmp:
        procs = server_group(tmp)
        try:
            upstream_port, upstream_admin = free_port(), free_port()
            upstream = _start_envoy(procs, tmp, "upstream", _upstream_config(upstream_port, upstream_admin),
                                    upstream_port, upstream_admin)
            _, issuer_url = start_issuer(procs)
            _, jwks = http_get(issuer_url + "/jwks")
            idgate, idgate_port, idgate_admin, grpc_port = _start_idgate(procs, tmp, issuer_url, upstream_port)
            token = mint_token(issuer_url)   # minted once: every request presents the same (cached) token
            auth = {"Host": PROXY_HOST, "Authorization": f"Bearer {token}"}
            rows: dict[str, Any] = {}
            configs = [
                ("envoy alone", _without_ext_authz(load_deploy_config("http")), {"Host": PROXY_HOST}, False),
                ("envoy jwt_authn + rbac", _jwt_rbac(load_deploy_config("http"), issuer_url, jwks.decode()), auth, False),
                ("envoy + idgate http", load_deploy_config("http"), auth, True),
                ("envoy + idgate grpc", load_deploy_config("grpc"), auth, True),
            ]
            print(f"wrk -t{settings.threads} -c{settings.connections} -d{settings.duration}s --latency "
                  f"(+{settings.warmup}s warm-up); Envoy --concurrency 1; wrk, Envoy, idgate and the upstream "
                  "share the machine's cores", flush=True)
            for name, base, headers, uses_idgate in configs:
                port, admin = free_port(), free_port()
                mode = "grpc" if name.endswith("grpc") else "http"
                rendered = render(base, app_port=upstream_port, idgate_port=grpc_port if mode == "grpc" else idgate_port)
                envoy = _start_envoy(procs, tmp, _slug(name), _on_ports(rendered, port, admin), port, admin)
                watched = {"envoy": envoy.proc, "upstream": upstream.proc, **({"idgate": idgate} if uses_idgate else {})}
                try:
                    rows[name] = _measure(name, f"http://{HOST}:{port}{PROXY_PATH}", headers, settings, watched,
                                          profile_dir)
                finally:
                    procs.stop(envoy.proc)
            return _summary(rows, settings, metric_values(f"http://{HOST}:{idgate_admin}"))
        finally:
            procs.stop_all()


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


def _summary(rows: dict[str, Any], settings: WrkSettings, metrics: dict[str, float]) -> dict[str, Any]:
    alone = rows["envoy alone"]["requests_per_s"]
    native = rows["envoy jwt_authn + rbac"]["requests_per_s"]
    for row in rows.values():
        row["ratio_vs_envoy_alone"] = round(row["requests_per_s"] / alone, 3)
        row["ratio_vs_jwt_authn_rbac"] = round(row["requests_per_s"] / native, 3)
    targets = {
        f"idgate {mode} ext_authz": {
            "target": f">= {floor} x jwt_authn + rbac",
            "measured": rows[f"envoy + idgate {mode}"]["ratio_vs_jwt_authn_rbac"],
            "met": rows[f"envoy + idgate {mode}"]["ratio_vs_jwt_authn_rbac"] >= floor,
        }
        for mode, floor in TARGETS.items()
    }
    print(f"\n  {'':<28} {'req/s':>9} {'p99 ms':>8} {'× alone':>8} {'× jwt+rbac':>11}")
    for name, row in rows.items():
        print(f"  {name:<28} {row['requests_per_s']:>9.0f} {row['p99_ms']:>8.2f} "
              f"{row['ratio_vs_envoy_alone']:>8.2f} {row['ratio_vs_jwt_authn_rbac']:>11.2f}")
    for name, target in targets.items():
        print(f"  {name}: {target['measured']:.2f} (target {target['target']}) {'met' if target['met'] else 'NOT MET'}")
    return {
        "benchmark": "envoy",
        "wrk": {"threads": settings.threads, "connections": settings.connections,
                "duration_s": settings.duration, "warmup_s": settings.warmup},
        "envoy_concurrency": 1,
        "policy_rules": RULES,
        "audit_fsync": True,
        "rows": rows,
        "targets": targets,
        "idgate_audit_records_per_fsync": _records_per_fsync(metrics),
    }


def _records_per_fsync(metrics: dict[str, float]) -> float | None:
    batches = metrics.get("idgate_audit_batch_records_count", 0.0)
    return round(metrics.get("idgate_audit_batch_records_sum", 0.0) / batches, 1) if batches else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 s runs with 1 s warm-up")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--duration", type=int, default=None)
    parser.add_argument("--profile", action="store_true",
                        help="sample idgate with py-spy during its runs (slows it down; results go to envoy-profiled.json)")
    args = parser.parse_args()
    if wrk_path() is None:
        print("wrk is not installed: install it with `apt-get install wrk` (Debian/Ubuntu)", file=sys.stderr)
        return 2
    envoy_binary()   # fails with the way to install it
    duration = args.duration or (3 if args.quick else 10)
    settings = WrkSettings(threads=args.threads, connections=args.connections, duration=duration,
                           warmup=1 if args.quick else 2)
    profile_dir = RESULTS / "profiles" if args.profile else None
    if profile_dir is not None:
        if _profile.py_spy() is None:
            print("--profile needs py-spy: .venv/bin/pip install py-spy", file=sys.stderr)
            return 2
        profile_dir.mkdir(parents=True, exist_ok=True)
    load_at_start = os.getloadavg()
    with sigterm_as_interrupt():
        result = run(settings, profile_dir)
    # Other work on the machine shifts every row; the load average says how much there was.
    result["loadavg"] = {"start": [round(x, 2) for x in load_at_start], "end": [round(x, 2) for x in os.getloadavg()]}
    if profile_dir is not None:
        for folded in sorted(profile_dir.glob("envoy-*.folded")):
            print(f"\nhottest idgate frames in {folded.name} (share of busy samples, inclusive):")
            for share, frame in _profile.hottest(folded):
                print(f"  {share:6.1%}  {frame}")
    # A profiled run is slower: keep it out of the file run.py reports.
    path = write_result("envoy-profiled" if profile_dir is not None else "envoy", result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
