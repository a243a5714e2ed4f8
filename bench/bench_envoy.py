"""Issue 9's Envoy targets, in one sitting: Envoy at --concurrency 1 in front of a fast upstream (a second
Envoy answering directly): Envoy alone; Envoy's own jwt_authn + rbac (the native baseline); Envoy + idgate
HTTP ext_authz and gRPC ext_authz, with idgate on asyncio (the targets) and on uvloop (beside them).
idgate runs alone on one core; each Envoy, wrk and the upstream Envoy on the other, the native baseline
too (see "pinning" in the JSON).  Rows take turns over rounds; ratios are medians of same-round ratios;
then a short py-spy run per ext_authz surface, apart from the measured ones.  Writes
bench/results/envoy.json.

Run: .venv/bin/python -m bench.bench_envoy [--quick] [--rounds 3] [--duration 5] [--connections 32] [--no-profile]
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench._profile import slug
from bench._sitting import (
    Cores, LoadOptions, LoadTarget, Runs, bench_cores, load_options, pin, ratio_verdict, same_round_ratio, sitting,
)
from bench._stack import (
    PROXY_HOST, PROXY_PATH, Idgate, WrkSettings, audit_stats, exit_code, http_get, measured_and_written, mint_token,
    server_group, start_idgate, start_issuer, wait_ready, workdir,
)
from tests.harness.envoy import envoy_binary, http_connection_manager, load_deploy_config, render
from tests.harness.processes import HOST, ProcessGroup, ServerProcess, free_port

RULES = 100
AUDIENCE = "bench-api"
BODY = b"Hello, World!"
FLOORS = {"http": 0.8, "grpc": 0.6}      # the issue's floor, as a share of jwt_authn + rbac
LOOPS = ("asyncio", "uvloop")
ALONE = "envoy alone"
NATIVE = "envoy jwt_authn + rbac"
PINNING = ("idgate is the server under test: it runs alone on its core. Envoy (--concurrency 1), wrk and the "
           "upstream Envoy share the other core in every row, the native jwt_authn + rbac baseline included, so "
           "each ratio says whether idgate on a core of its own keeps up with what Envoy's core can do; cpu_share "
           "shows which process is the bottleneck.")


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


def _via_idgate(mode: str, loop: str) -> str:
    return f"envoy + idgate {mode} ({loop})"


def _targets(procs: ProcessGroup, tmp: Path, cores: Cores, settings: WrkSettings) -> tuple[list[LoadTarget], Idgate]:
    """Start the upstream, the issuer, both idgates (pinned to the server core) and one Envoy per row (on
    the load core); the rows wrk measures, and the asyncio idgate py-spy profiles."""
    upstream_port, upstream_admin = free_port(), free_port()
    upstream = _start_envoy(procs, tmp, "upstream", _upstream_config(upstream_port, upstream_admin),
                            upstream_port, upstream_admin)
    _, issuer_url = start_issuer(procs)
    _, jwks = http_get(issuer_url + "/jwks")
    token = mint_token(issuer_url)   # minted once: every request presents the same (cached) token
    auth = {"Host": PROXY_HOST, "Authorization": f"Bearer {token}"}
    native = render(load_deploy_config("http"), app_port=upstream_port, idgate_port=0)   # no idgate cluster left
    rows: list[tuple[str, dict[str, Any], dict[str, str], dict[str, ServerProcess]]] = [
        (ALONE, _without_ext_authz(native), {"Host": PROXY_HOST}, {}),
        (NATIVE, _jwt_rbac(native, issuer_url, jwks.decode()), auth, {}),
    ]
    idgates = {}
    for loop in LOOPS:
        idgate = idgates[loop] = start_idgate(procs, tmp, issuer_url, upstream_port, name=f"idgate-{loop}",
                                              rules=RULES, loop=loop, ext_authz=True)
        pin(idgate.proc.pid, cores.server)
        assert idgate.grpc_port is not None
        for mode, idgate_port in (("http", idgate.port), ("grpc", idgate.grpc_port)):
            rendered = render(load_deploy_config(mode), app_port=upstream_port, idgate_port=idgate_port)
            rows.append((_via_idgate(mode, loop), rendered, auth, {"idgate": idgate.proc}))
    targets = []
    for name, config, headers, idgate_proc in rows:
        port, admin = free_port(), free_port()
        envoy = _start_envoy(procs, tmp, slug(name), _on_ports(config, port, admin), port, admin)
        watched = {**idgate_proc, "envoy": envoy.proc, "upstream": upstream.proc}
        targets.append(LoadTarget(name, f"http://{HOST}:{port}{PROXY_PATH}", headers, BODY, watched, settings))
    return targets, idgates["asyncio"]


def _judge(runs: Runs) -> dict[str, dict[str, Any]]:
    verdicts = {}
    for mode, floor in FLOORS.items():
        what = f"envoy + idgate {'HTTP' if mode == 'http' else 'gRPC'} ext_authz"
        verdicts[what] = ratio_verdict(runs, _via_idgate(mode, "asyncio"), NATIVE,
                                       f"≥ {floor:.1f} × {NATIVE} req/s (asyncio)", floor)
        verdicts[f"{what} on uvloop"] = ratio_verdict(runs, _via_idgate(mode, "uvloop"), NATIVE)
    return verdicts


def run(options: LoadOptions) -> dict[str, Any]:
    cores = bench_cores()
    settings = options.settings
    with workdir("idgate-bench-envoy-") as tmp:
        procs = server_group(tmp)
        try:
            targets, idgate = _targets(procs, tmp, cores, settings)
            print(f"wrk -t{settings.threads} -c{settings.connections} -d{settings.duration}s --latency "
                  f"(+{settings.warmup}s warm-up), {options.rounds} interleaved round(s), Envoy --concurrency 1; "
                  "idgate on its own core, Envoy, wrk and the upstream on the other", flush=True)
            done = sitting(targets, options, {_via_idgate(mode, "asyncio"): idgate.proc.pid for mode in FLOORS})
            for name, row in done.rows.items():
                row["ratio_vs_envoy_alone"] = same_round_ratio(done.runs[name], done.runs[ALONE])[0]
                row["ratio_vs_jwt_authn_rbac"] = same_round_ratio(done.runs[name], done.runs[NATIVE])[0]
            # cpu_us_per_request: idgate's per check where idgate answers, Envoy's where Envoy decides alone.
            return done.result("envoy", options, envoy_concurrency=1, pinning={**cores.describe(), "how": PINNING},
                               policy_rules=RULES, audit_fsync=True, loop_of_the_targets="asyncio",
                               targets=_judge(done.runs), audit=audit_stats(idgate))
        finally:
            procs.stop_all()


def main() -> int:
    options = load_options(__doc__)
    envoy_binary()   # fails with the way to install it
    return measured_and_written("envoy", lambda: run(options))


if __name__ == "__main__":
    sys.exit(exit_code(main))
