"""idgate.yaml → frozen Config.  Strict: unknown keys and wrong types are errors, every problem is
reported at once with file and line (ConfigError), and `idgate check-config` runs this same code.

The environment may override a secret and an endpoint: IDGATE_ASSERTION_KEY_FILE, IDGATE_GATEWAY_KEYS, and
the audit's (audit_checks.py): IDGATE_AUDIT_PATH, IDGATE_AUDIT_INSTANCE, IDGATE_ANCHOR_KEY_FILE.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from types import MappingProxyType

from proxy.config.audit_checks import AUDIT_VALIDATORS, apply_audit_environment, check_audit_files
from proxy.config.checks import (
    AWS_REGION, check_positive, cidr_problem, http_url_problem, modules_installed, path_prefix_problem,
)
from proxy.config.decoder import Decoder, Schema, Spot, read_yaml, readable_file_problem
from proxy.config.login_checks import (
    check_client, check_login, check_login_references, check_session_keys, check_store,
)
from proxy.config.tracing import check_tracing
from proxy.config.schema import (
    ALLOWED_ALGORITHMS, ENV_ASSERTION_KEY_FILE, ENV_GATEWAY_KEYS, MAX_AWS_REGION_CHARS, MAX_BROKER_DURATION, MAX_LEEWAY,
    MIN_BROKER_DURATION, STALE_REFRESHES, AdminConfig, AssertionConfig, AwsConfig, Config,
    CredentialsConfig, ExtAuthzGrpcConfig, ExtAuthzHttpConfig, ForwardAuthConfig, IssuerConfig, LimitsConfig,
    GatewayConfig, ListenerConfig, LoginConfig, OidcClientConfig, RouteConfig, SessionStoreConfig, TlsConfig,
    TracingConfig, UpstreamTlsConfig,
)
from proxy.core.errors import ConfigError, ConfigProblem
from proxy.core.hosts import is_host_name, is_loopback

# --- loading: strict decode (proxy.config.decoder) → per-object checks → cross checks and environment ---


_ROUTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _check_host(value: str, spot: Spot) -> None:
    if not is_host_name(value) and not is_loopback(value):
        spot.report(f"'{value}' is not a valid host name or IP address (no port)", "host")


def _check_port(port: int, spot: Spot) -> None:
    if not 0 <= port <= 65535:
        spot.report("must be between 0 and 65535 (0 = pick a free port)", "port")


def _check_listener(listener: ListenerConfig, spot: Spot) -> ListenerConfig:
    _check_host(listener.host, spot)
    _check_port(listener.port, spot)
    return listener


def _check_admin(admin: AdminConfig, spot: Spot) -> AdminConfig:
    _check_host(admin.host, spot)
    _check_port(admin.port, spot)
    return admin


def _check_tls(tls: TlsConfig, spot: Spot) -> TlsConfig:
    for name in ("cert_file", "key_file"):
        spot.report_unreadable(getattr(tls, name), name)
    return tls


def _check_limits(limits: LimitsConfig, spot: Spot) -> LimitsConfig:
    check_positive(limits, spot, *(f.name for f in fields(limits)))
    if limits.max_head_bytes < limits.max_line_bytes:
        spot.report("must be at least max_line_bytes: a head holds its request line", "max_head_bytes")
    if limits.max_connections_per_peer > limits.max_connections:
        spot.report("must not exceed max_connections", "max_connections_per_peer")
    return limits


def _check_issuer(issuer: IssuerConfig, spot: Spot) -> IssuerConfig:
    why = http_url_problem(issuer.issuer, bare=False)
    if why:
        spot.report(why, "issuer")
    if not issuer.audiences:
        spot.report("an issuer must name at least one audience", "audiences")
    if issuer.jwks_uri is not None and issuer.jwks_file is not None:
        spot.report("give jwks_uri or jwks_file, not both", "jwks_file")
    if issuer.jwks_uri is not None and (why := http_url_problem(issuer.jwks_uri, bare=False)):
        spot.report(why, "jwks_uri")
    spot.report_unreadable(issuer.jwks_file, "jwks_file")
    if not issuer.algorithms:
        spot.report("must list at least one algorithm", "algorithms")
    for i, alg in enumerate(issuer.algorithms):
        if alg not in ALLOWED_ALGORITHMS:
            spot.report(f"algorithm '{alg}' is not allowed; use {', '.join(sorted(ALLOWED_ALGORITHMS))}",
                        "algorithms", i)
    if not 0 <= issuer.leeway <= MAX_LEEWAY:
        spot.report(f"must be between 0 and {MAX_LEEWAY:g} seconds", "leeway")
    if issuer.max_stale < 0:
        spot.report("must not be negative", "max_stale")
    elif issuer.max_stale < STALE_REFRESHES * issuer.refresh_interval:
        # Keys older than max_stale are refused: below this, a healthy issuer's keys go stale between two
        # refreshes, or after one failed refresh, and valid tokens are refused.
        spot.report(f"must be at least {STALE_REFRESHES} x refresh_interval ({issuer.refresh_interval:g} s), "
                    "or valid tokens are refused while the issuer is healthy", "max_stale")
    check_positive(issuer, spot, "max_token_bytes", "max_age", "max_lifetime", "refresh_interval",
                    "unknown_kid_min_interval")
    return issuer


def _check_route(route: RouteConfig, spot: Spot) -> RouteConfig:
    if not _ROUTE_NAME.fullmatch(route.name):
        spot.report("must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}", "name")
    if why := http_url_problem(route.upstream, bare=True):
        spot.report(why, "upstream")
    elif route.tls is not None and not route.upstream.lower().startswith("https://"):
        spot.report("only for an https:// upstream", "tls")
    hosts = tuple(h.lower() for h in route.hosts)   # host names are case-insensitive: compare lower-case
    for i, host in enumerate(hosts):
        if not is_host_name(host):
            spot.report(f"'{host}' is not a valid host name (no port, no wildcard)", "hosts", i)
    if why := path_prefix_problem(route.path_prefix):
        spot.report(why, "path_prefix")
    check_positive(route, spot, "connect_timeout", "read_timeout", "max_body_bytes", "max_connections", "pool_timeout",
                    "max_connections_per_identity",
                    "websocket_idle_timeout", "websocket_max_lifetime")
    return replace(route, hosts=hosts)


def _no_password() -> bytes:
    raise ValueError("encrypted")


def _check_upstream_tls(tls: UpstreamTlsConfig, spot: Spot) -> UpstreamTlsConfig:
    """Each file readable (a problem names the file), then loaded as the proxy will load it, so that
    `idgate check-config` finds a bundle that is no PEM or a key that is not the certificate's."""
    readable = not spot.decoder.offline
    for name in ("ca_file", "cert_file", "key_file"):
        if spot.report_unreadable(getattr(tls, name), name):
            readable = False
    if (tls.cert_file is None) != (tls.key_file is None):
        spot.report("give cert_file and key_file together", "key_file" if tls.key_file is None else "cert_file")
        readable = False
    if tls.server_name is not None and not is_host_name(tls.server_name.lower()):
        spot.report(f"'{tls.server_name}' is not a valid host name", "server_name")
    if not readable:
        return tls
    if tls.ca_file is not None:
        try:
            ssl.create_default_context(cafile=str(tls.ca_file))
        except ssl.SSLError as exc:
            spot.report(f"{tls.ca_file}: not a PEM bundle of CA certificates ({exc.reason or exc})", "ca_file")
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(tls.cert_file, tls.key_file, password=_no_password)
        except ValueError:
            spot.report(f"{tls.key_file}: an encrypted private key is not supported", "key_file")
        except ssl.SSLError as exc:
            spot.report(f"{tls.cert_file}, {tls.key_file}: not a PEM certificate chain and its private key "
                        f"({exc.reason or exc})", "cert_file")
    return replace(tls, server_name=tls.server_name.lower()) if tls.server_name else tls


def _check_forward_auth(forward_auth: ForwardAuthConfig, spot: Spot) -> ForwardAuthConfig:
    if why := path_prefix_problem(forward_auth.path):
        spot.report(why, "path")
    return forward_auth


def _check_ext_authz_http(http: ExtAuthzHttpConfig, spot: Spot) -> ExtAuthzHttpConfig:
    if why := path_prefix_problem(http.path_prefix):
        spot.report(why, "path_prefix")
    elif http.path_prefix == "/" or http.path_prefix.endswith("/"):
        # Envoy prepends the prefix to the original path, which starts with '/' already.
        spot.report("must not be '/' or end with '/'", "path_prefix")
    return http


def _check_ext_authz_grpc(grpc: ExtAuthzGrpcConfig, spot: Spot) -> ExtAuthzGrpcConfig:
    _check_host(grpc.host, spot)
    _check_port(grpc.port, spot)
    check_positive(grpc, spot, "max_message_bytes")
    if not modules_installed("hpack", "envoy.service.auth.v3"):   # core modules never import them
        spot.report("the gRPC ext_authz surface needs the envoy extra: pip install 'idgate[envoy]'")
    return grpc


def _check_assertion(assertion: AssertionConfig, spot: Spot) -> AssertionConfig:
    check_positive(assertion, spot, "ttl")   # key_file is checked after environment overrides
    return assertion


def _check_credentials(credentials: CredentialsConfig, spot: Spot) -> CredentialsConfig:
    if why := path_prefix_problem(credentials.path):
        spot.report(why, "path")
    return credentials


def _check_gateway(gateway: GatewayConfig, spot: Spot) -> GatewayConfig:
    if why := path_prefix_problem(gateway.path):
        spot.report(why, "path")
    elif gateway.path == "/":
        spot.report("must not be '/': the reverse proxy serves the rest of the listener", "path")
    if gateway.endpoint is not None and (why := http_url_problem(gateway.endpoint, bare=True)):
        spot.report(why, "endpoint")
    for i, host in enumerate(gateway.hosts):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "")
        if not (is_host_name(name) or is_loopback(name)) or (port and not port.isdigit()):
            spot.report(f"'{host}' is not host or host:port in lower case", "hosts", i)
    if not MIN_BROKER_DURATION <= gateway.credential_lifetime <= MAX_BROKER_DURATION:
        spot.report(f"must be between {MIN_BROKER_DURATION} and {MAX_BROKER_DURATION} seconds (botocore "
                    "refreshes credentials below 15 minutes left)", "credential_lifetime")
    if not 0 < gateway.max_clock_skew <= 900:
        spot.report("must be greater than 0 and at most 900 seconds (AWS allows 300)", "max_clock_skew")
    check_positive(gateway, spot, "key_schema_ttl", "max_body_bytes", "max_response_bytes", "connect_timeout",
                    "read_timeout", "max_connections")
    return gateway


def _check_aws(aws: AwsConfig, spot: Spot) -> AwsConfig:
    if not AWS_REGION.fullmatch(aws.region) or len(aws.region) > MAX_AWS_REGION_CHARS:
        spot.report(f"'{aws.region}' is not an AWS region name (e.g. us-east-1)", "region")
    if aws.sts_endpoint is not None and (why := http_url_problem(aws.sts_endpoint, bare=True)):
        spot.report(why, "sts_endpoint")
    if not MIN_BROKER_DURATION <= aws.default_duration <= MAX_BROKER_DURATION:
        spot.report(f"must be between {MIN_BROKER_DURATION} and {MAX_BROKER_DURATION} seconds (credentials "
                    "are vended with at least 30 minutes left)", "default_duration")
    if not 0 < aws.sts_timeout <= 60:
        spot.report("must be greater than 0 and at most 60 seconds", "sts_timeout")
    check_positive(aws, spot, "credential_cache_size")
    return aws


def _check_config(config: Config, spot: Spot) -> Config:
    for i, cidr in enumerate(config.trusted_proxies):
        if why := cidr_problem(cidr):
            spot.report(why, "trusted_proxies", i)
    if not config.issuers:
        spot.report("at least one issuer is required", "issuers")
    _report_duplicates([i.issuer for i in config.issuers], spot, "issuers", "issuer", "issuer")
    _report_duplicates([r.name for r in config.routes], spot, "routes", "name", "route name")
    listen, admin = config.listen, config.admin
    if (listen.host, listen.port) == (admin.host, admin.port) and listen.port != 0:
        spot.child("admin").report("admin must not use the same host and port as listen", "port")
    if not spot.decoder.offline and not config.policies_dir.is_dir():
        spot.report(f"{config.policies_dir}: must be an existing directory", "policies_dir")
    grpc = config.ext_authz.grpc
    if grpc is not None and grpc.port != 0 and (grpc.host, grpc.port) in ((listen.host, listen.port), (admin.host, admin.port)):
        spot.child("ext_authz").child("grpc").report("must not use the same host and port as listen or admin", "port")
    http = config.ext_authz.http
    if http is not None and config.forward_auth.enabled and _prefix_overlap(http.path_prefix, config.forward_auth.path):
        spot.child("ext_authz").child("http").report("must not overlap forward_auth.path", "path_prefix")
    if config.credentials.enabled and config.forward_auth.enabled and config.credentials.path == config.forward_auth.path:
        spot.child("credentials").report("must differ from forward_auth.path", "path")
    gateway = config.aws.gateway
    if gateway.enabled:
        taken = [p for on, p in ((config.credentials.enabled, config.credentials.path),
                                 (config.forward_auth.enabled, config.forward_auth.path),
                                 (http is not None, http.path_prefix if http else "")) if on]
        if any(_prefix_overlap(gateway.path, p) for p in taken):
            spot.child("aws").child("gateway").report("must not overlap the credentials, forward_auth or "
                                                      "ext_authz paths", "path")
    if config.dev_mode and not (is_loopback(listen.host) and is_loopback(admin.host)):
        spot.report("only allowed when listen.host and admin.host are loopback addresses",
                    "dev_mode")
    check_login_references(config, spot)
    check_positive(config, spot, "token_cache_size")
    return config


def _prefix_overlap(a: str, b: str) -> bool:
    return a.startswith(b) or b.startswith(a)   # both are matched as plain string prefixes


def _report_duplicates(values: list[str], spot: Spot, field: str, key: str, what: str) -> None:
    first: dict[str, int] = {}
    for i, value in enumerate(values):
        if value in first:
            spot.child(field, i).report(f"duplicate {what} '{value}' (first at line "
                                        f"{spot.child(field, first[value]).line(key)})", key)
        else:
            first[value] = i


_SCHEMA = Schema(
    internal=frozenset({(Config, "source")}),
    validators=MappingProxyType({
        ListenerConfig: _check_listener, AdminConfig: _check_admin, TlsConfig: _check_tls,
        LimitsConfig: _check_limits, IssuerConfig: _check_issuer, RouteConfig: _check_route,
        UpstreamTlsConfig: _check_upstream_tls,
        ForwardAuthConfig: _check_forward_auth,
        ExtAuthzHttpConfig: _check_ext_authz_http, ExtAuthzGrpcConfig: _check_ext_authz_grpc,
        AssertionConfig: _check_assertion, Config: _check_config,
        CredentialsConfig: _check_credentials, AwsConfig: _check_aws, GatewayConfig: _check_gateway,
        **AUDIT_VALIDATORS, TracingConfig: check_tracing,
        OidcClientConfig: check_client, LoginConfig: check_login, SessionStoreConfig: check_store,
    }),
)


def _apply_environment(config: Config, env: Mapping[str, str]) -> Config:
    """DESIGN §7: the environment may override secrets and endpoints (an empty value counts as unset)."""
    if key_file := env.get(ENV_ASSERTION_KEY_FILE):
        config = replace(config, assertion=replace(config.assertion, key_file=Path(key_file)))
    return replace(config, audit=apply_audit_environment(config.audit, env))


def load_config(path: Path, env: Mapping[str, str] | None = None, *, offline: bool = False) -> Config:
    """Read, decode and validate idgate.yaml; raise ConfigError listing every problem with file:line.
    Offline, the files and directories it names and the secrets the environment supplies at runtime are
    not required (every other check runs)."""
    env = os.environ if env is None else env
    node = read_yaml(path)
    decoder = Decoder(path, _SCHEMA, offline=offline)
    if node is None:
        raise ConfigError([ConfigProblem(str(path), None, "file is empty")])
    config = decoder.decode(node, Config, injected={"source": path})
    if config is not None:
        config = _apply_environment(config, env)
        key_file = config.assertion.key_file
        if env.get(ENV_ASSERTION_KEY_FILE) and key_file and not offline and (why := readable_file_problem(key_file)):
            decoder.problems.append(ConfigProblem(f"${ENV_ASSERTION_KEY_FILE}", None, f"{key_file}: {why}"))
        elif not env.get(ENV_ASSERTION_KEY_FILE):
            decoder.spot(node, Config, "").child("assertion").report_unreadable(key_file, "key_file")
        gateway = config.aws.gateway
        if gateway.enabled and not env.get(ENV_GATEWAY_KEYS):
            spot = decoder.spot(node, Config, "").child("aws").child("gateway")
            if gateway.key_file is None and not offline:   # offline, $IDGATE_GATEWAY_KEYS may come at runtime
                spot.report(f"the gateway needs its key ring: key_file, or ${ENV_GATEWAY_KEYS}", "enabled")
            spot.report_unreadable(gateway.key_file, "key_file")
        check_audit_files(config.audit, decoder.spot(node, Config, "").child("audit"), env, decoder.problems)
        check_session_keys(config, decoder.spot(node, Config, ""), env)
    decoder.raise_if_problems()
    assert config is not None   # decode returns None only after reporting a problem
    return config


def check_config(path: Path, env: Mapping[str, str] | None = None, *, offline: bool = False) -> list[str]:
    """What `idgate check-config` prints: one line per problem, empty when the file is valid."""
    try:
        load_config(path, env, offline=offline)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []
