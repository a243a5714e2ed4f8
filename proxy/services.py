"""The services one idgate process runs (token verifier, policy store, audit log, assertion signer,
upstream connection pool, pipeline), started and stopped together.  Edges reach them via SERVICES."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from proxy.assertion import AssertionSigner, load_signing_key
from proxy.audit import AuditLog
from proxy.audit.anchors import AnchorSigner
from proxy.audit.shipping import Shipper
from proxy.aws.broker import CredentialBroker, start_broker
from proxy.aws.dynamodb.calls import known_operations
from proxy.aws.gateway import DynamoDbGateway, load_gateway_ring
from proxy.aws.sts import StsClientFactory
from proxy.config import AuditConfig, Config, RouteConfig
from proxy.core.headers import TrustedProxies
from proxy.keys import load_p256_private_key
from proxy.metrics import Metrics
from proxy.oidc import TokenVerifier
from proxy.pipeline import Pipeline
from proxy.policy.diff import PolicyDiff
from proxy.policy.engine import CompiledPolicy
from proxy.policy.store import OnChange, PolicyStore
from proxy.sessions import Sessions, private_cookie, start_sessions
from proxy.tracing import NO_TRACING, Tracing, start_tracing
from proxy.transport import http1
from proxy.worker_state import RestartsCollector, WorkerSeat

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("idgate")

POLICY_POLL_SECONDS = 2.0


@dataclass(slots=True)
class Services:
    config: Config
    metrics: Metrics
    verifier: TokenVerifier
    policy: PolicyStore
    audit: AuditLog
    signer: AssertionSigner
    pipeline: Pipeline
    upstream: http1.Pool                        # the reverse proxy's HTTP/1.1 connections
    origins: Mapping[str, http1.Origin]         # route name -> its upstream in that pool
    websocket_session: aiohttp.ClientSession    # WebSocket relays only (aiohttp's client)
    trusted: TrustedProxies
    background: list[asyncio.Task[None]] = field(default_factory=list)
    broker: CredentialBroker | None = None      # when credentials or the DynamoDB gateway are enabled
    gateway: DynamoDbGateway | None = None      # when aws.gateway.enabled
    shipper: Shipper | None = None              # when audit.shipping is configured
    tracing: Tracing = NO_TRACING               # on with a `tracing:` section (proxy.tracing)
    workers: WorkerSeat | None = None           # a `--workers N` worker: its place among its siblings
    sessions: Sessions | None = None            # browser login, with a `login:` section
    private_cookie: Callable[[str], bool] | None = None   # idgate's own cookies, never sent upstream

    def request_reload(self) -> None:
        """SIGHUP: reload the policy files and refetch every issuer's keys, both in the background
        (requests keep being served with what is loaded until the new state is swapped in)."""
        self.policy.request_reload()
        task = asyncio.get_running_loop().create_task(self.verifier.refresh_keys(), name="refresh-keys")
        self.background.append(task)
        task.add_done_callback(self.background.remove)


SERVICES: web.AppKey[Services] = web.AppKey("idgate_services", Services)


# Idle keep-alive connections are closed after this long (aiohttp's keepalive_timeout before).
UPSTREAM_IDLE_SECONDS = 30.0


def _upstream_tls(route: RouteConfig) -> http1.TlsSettings | None:
    tls = route.tls
    if tls is None:
        return None
    ca, cert, key = (None if path is None else str(path) for path in (tls.ca_file, tls.cert_file, tls.key_file))
    return http1.TlsSettings(ca_file=ca, cert_file=cert, key_file=key, server_name=tls.server_name)


def _upstream_pool(config: Config) -> tuple[http1.Pool, Mapping[str, http1.Origin]]:
    """Pooled keep-alive connections; bodies pass through byte for byte (no decompression, no default
    headers the client did not send).  No limit of its own: each route bounds its connections
    (edges._routes.RouteSlots, with a bounded wait), and an origin keeps at most that many idle."""
    pool = http1.Pool(idle_timeout=UPSTREAM_IDLE_SECONDS)
    origins = {route.name: pool.origin(route.upstream, _upstream_tls(route), max_idle=route.max_connections)
               for route in config.routes}
    return pool, MappingProxyType(origins)


def _websocket_session() -> aiohttp.ClientSession:
    # Nothing added the client did not send, nothing decompressed, no proxy from the environment.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30, enable_cleanup_closed=True)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
    )


@asynccontextmanager
async def running_services(config: Config, *, metrics: Metrics | None = None,
                           sts_client: StsClientFactory | None = None,
                           span_exporter: SpanExporter | None = None,
                           workers: WorkerSeat | None = None) -> AsyncIterator[Services]:
    """`sts_client` builds the credential broker's STS client (default: boto3 with the usual credential chain);
    `span_exporter` replaces tracing's OTLP exporter (tests); `workers` is given to a `--workers N` worker.
    Every resource is closed, in reverse order, however far startup got."""
    metrics = metrics or Metrics()
    if workers is not None:
        RestartsCollector(workers.table, metrics.registry)
    policy = PolicyStore(config.policies_dir, metrics)
    signer = AssertionSigner(load_signing_key(config.assertion.key_file), config.assertion.ttl)
    if config.assertion.key_file is None:
        log.warning("no assertion.key_file configured: X-Idgate-Assertion keys are per process (pid %d)", os.getpid())
    background: list[asyncio.Task[None]] = []
    trusted = TrustedProxies(config.trusted_proxies)
    async with AsyncExitStack() as stack:
        # Reads the pseudonym key and starts the exporter's thread: not on the loop.
        tracing = await asyncio.to_thread(start_tracing, config.tracing, trusted, metrics, exporter=span_exporter)
        stack.push_async_callback(tracing.close)
        oidc_session = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10), trust_env=False))
        # TLS contexts are built here (reading CA bundles and keys), once per upstream.
        upstream, origins = await asyncio.to_thread(_upstream_pool, config)
        stack.push_async_callback(upstream.close)
        websocket_session = await stack.enter_async_context(_websocket_session())
        verifier = TokenVerifier(config.issuers, oidc_session, metrics, cache_size=config.token_cache_size,
                                 tracing=tracing)
        stack.push_async_callback(verifier.close)
        audit = AuditLog(config.audit, metrics)
        stack.push_async_callback(audit.close)
        await audit.open()
        policy.on_change = _policy_change_recorder(audit)
        shipper: Shipper | None = None
        if config.audit.shipping is not None:
            shipper = await asyncio.to_thread(_shipper, audit, config.audit, config.aws.region, metrics)
            # Closed before the audit log's own callback runs: it closes the log, then ships what is left.
            stack.push_async_callback(shipper.close)
            await shipper.start()
        broker: CredentialBroker | None = None
        gateway_config = config.aws.gateway
        if config.credentials.enabled or gateway_config.enabled:
            # Building a botocore client reads its service model from disk: not on the loop.
            started_broker, sts_pool = await asyncio.to_thread(start_broker, config.aws, metrics, sts_client)
            stack.callback(sts_pool.shutdown, wait=False, cancel_futures=True)
            stack.push_async_callback(started_broker.close)
            broker = started_broker
        gateway: DynamoDbGateway | None = None
        if gateway_config.enabled:
            assert broker is not None
            ring = await asyncio.to_thread(load_gateway_ring, gateway_config, os.environ)
            await asyncio.to_thread(known_operations)      # botocore's DynamoDB model, read from disk once
            gateway = DynamoDbGateway(gateway_config, config.aws.region, ring, broker, upstream, metrics)
            stack.callback(gateway.close)
        sessions = await asyncio.to_thread(start_sessions, config, oidc_session, verifier, os.environ,
                                           workers=workers.table.count if workers is not None else 1)
        if sessions is not None:
            stack.push_async_callback(sessions.close)
        await verifier.start()
        services = Services(
            config=config, metrics=metrics, verifier=verifier, policy=policy, audit=audit, signer=signer,
            pipeline=Pipeline(verifier, policy, audit, metrics, tracing, sessions), upstream=upstream, origins=origins,
            websocket_session=websocket_session, trusted=trusted, background=background, broker=broker,
            gateway=gateway, shipper=shipper, tracing=tracing, workers=workers, sessions=sessions,
            private_cookie=private_cookie(config.login.session_cookie) if config.login is not None else None,
        )
        stack.push_async_callback(_stop_tasks, background)
        background.append(asyncio.create_task(policy.watch(POLICY_POLL_SECONDS), name="policy-watch"))
        yield services


def _policy_change_recorder(audit: AuditLog) -> OnChange:
    async def record(change: PolicyDiff, compiled: CompiledPolicy) -> None:
        body = {"rules": len(compiled.rules), **change.record()}
        await audit.append({"event": "policy_change", **body})     # durable before the new policy serves
        log.info("policy changed", extra=body)
    return record


def _shipper(audit: AuditLog, config: AuditConfig, region: str, metrics: Metrics) -> Shipper:
    assert config.shipping is not None and config.shipping.anchors.key_file is not None
    key = load_p256_private_key(config.shipping.anchors.key_file, "audit anchor key")
    return Shipper(audit, config, region, metrics, AnchorSigner(key))


async def _stop_tasks(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
