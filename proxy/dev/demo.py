"""`idgate demo`: a development issuer, an echo upstream and idgate itself, all on loopback,
with the example policies, and ready-to-paste commands that show an allow and a deny."""

from __future__ import annotations

import asyncio
import signal
import socket
import textwrap
from pathlib import Path

from aiohttp import web

from proxy.config import load_config
from proxy.core.errors import StartupError
from proxy.dev import local_aws
from proxy.dev.issuer import DevIssuer, require_loopback
from proxy.dev.local_aws import LocalAws
from proxy.dev.login_issuer import DevLogin
from proxy.dev.upstream import echo_app
from proxy.services import running_services
from proxy.app.listeners import Listeners

HOST = "127.0.0.1"
ISSUER_PORT, UPSTREAM_PORT, PROXY_PORT, ADMIN_PORT = 9400, 9401, 8080, 9090
AWS_PORT = 9402                             # moto_server, when moto[server] is installed (make demo does)
AUDIENCE = "idgate-demo"
WEB_HOST = "localhost"                      # the browser route: browsers keep Secure cookies on http://localhost
WEB_BASE = f"http://{WEB_HOST}:{PROXY_PORT}"
WEB_CLIENT = "idgate-demo-web"


def anchor_key_path(workdir: Path) -> Path:
    return local_aws.write_anchor_key((workdir / "anchor-key.pem").resolve())


def session_key_path(workdir: Path) -> Path:
    """The demo's session key ring (a new one per demo: sessions do not outlive it)."""
    return local_aws.write_key_ring((workdir / "session-keys.json").resolve())


def write_demo_config(workdir: Path, policies: Path, aws: LocalAws | None = None) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "idgate.yaml"
    config.write_text(textwrap.dedent(f"""\
        # Written by `idgate demo`: loopback only, development issuer.
        dev_mode: true
        listen: {{host: {HOST}, port: {PROXY_PORT}}}
        admin: {{host: {HOST}, port: {ADMIN_PORT}}}
        issuers:
          - issuer: http://{HOST}:{ISSUER_PORT}
            audiences: [{AUDIENCE}]
            require_typ: at+jwt
            client:                       # browser login at the development issuer's login page
              id: {WEB_CLIENT}
              auth_method: none           # a public client: PKCE only
              redirect_uris: [{WEB_BASE}/.idgate/callback]
              scopes: [openid, groups]
              post_logout_redirect_uri: {WEB_BASE}/
        policies_dir: {policies.resolve()}
        trusted_proxies: [127.0.0.1/32]
        routes:
          - name: demo-web                # people, with a browser
            upstream: http://{HOST}:{UPSTREAM_PORT}
            hosts: [{WEB_HOST}]
            login: true
          - name: demo-upstream
            upstream: http://{HOST}:{UPSTREAM_PORT}
        login:
          key_file: {session_key_path(workdir)}
        audit:
          path: {(workdir / 'audit' / 'idgate-audit.jsonl').resolve()}
        """) + (local_aws.audit_shipping_yaml(aws, anchor_key_path(workdir)) if aws else "")
        + (local_aws.config_yaml(aws, local_aws.write_key_ring((workdir / "gateway-keys.json").resolve())) if aws else ""))
    return config


def instructions(audit_path: Path) -> str:
    base = f"http://{HOST}:{PROXY_PORT}"
    return textwrap.dedent(f"""\
        idgate demo is running (Ctrl-C stops everything):
          issuer    http://{HOST}:{ISSUER_PORT}   (development issuer: mints tokens for svc-etl-7, svc-web-1)
          upstream  http://{HOST}:{UPSTREAM_PORT}   (echoes what it receives)
          idgate    {base}   admin http://{HOST}:{ADMIN_PORT}/metrics

        Allowed: svc-etl-7 reads orders (rule etl-read-orders)
          TOKEN=$(curl -s 'http://{HOST}:{ISSUER_PORT}/token?sub=svc-etl-7')
          curl -s -H "Authorization: Bearer $TOKEN" -H 'Host: orders.internal' {base}/v1/orders/7

        Denied (403): svc-web-1 may not read orders
          TOKEN=$(curl -s 'http://{HOST}:{ISSUER_PORT}/token?sub=svc-web-1')
          curl -si -H "Authorization: Bearer $TOKEN" -H 'Host: orders.internal' {base}/v1/orders/7

        Denied (401): no token
          curl -si -H 'Host: orders.internal' {base}/v1/orders/7

        Browser login: open {WEB_BASE}/ and pick a person on the issuer's login page
          alice (operators) sees the echo app, with the identity idgate added; mallory gets 403
          log out: {WEB_BASE}/.idgate/logout

        Audit log: {audit_path}
          tail -n 3 {audit_path}
          .venv/bin/idgate audit verify {audit_path}
        """)


async def _run_app(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    return runner


async def _start_local_aws(workdir: Path) -> LocalAws | None:
    """moto as the broker's AWS; the demo runs without the broker when moto[server] is missing."""
    aws = LocalAws(HOST, AWS_PORT)
    try:
        await aws.start(workdir / "moto.log")
    except FileNotFoundError:
        print("(no moto_server: pip install 'idgate[demo]' to see the credential broker too)\n", flush=True)
        return None
    return aws


_DEMO_PORTS = {ISSUER_PORT: "development issuer", UPSTREAM_PORT: "echo upstream", AWS_PORT: "local AWS",
               PROXY_PORT: "idgate", ADMIN_PORT: "idgate admin"}


def _require_demo_ports_free() -> None:
    """Checked before anything starts: a second demo would otherwise reach the first one's moto and stop
    on its half-made state (EntityAlreadyExists) rather than on the port."""
    for port, name in _DEMO_PORTS.items():
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((HOST, port))
            except OSError as exc:
                raise StartupError(f"the demo's {name} port {HOST}:{port} is taken ({exc.strerror}): another "
                                   "`make demo` is probably running; stop it (Ctrl-C in its terminal) or free the "
                                   "port") from exc


async def run_demo(workdir: Path, policies: Path) -> None:
    require_loopback(HOST)
    _require_demo_ports_free()
    workdir.mkdir(parents=True, exist_ok=True)
    aws = await _start_local_aws(workdir)
    if aws is not None:
        local_aws.use_demo_keys()
    try:
        await _run_demo(workdir, policies, aws)
    finally:
        if aws is not None:
            await aws.stop()


async def _run_demo(workdir: Path, policies: Path, aws: LocalAws | None) -> None:
    config = load_config(write_demo_config(workdir, policies, aws))
    issuer = DevIssuer(f"http://{HOST}:{ISSUER_PORT}", AUDIENCE)
    login = DevLogin(issuer.issuer_url, WEB_CLIENT, f"{WEB_BASE}/.idgate/callback", f"{WEB_BASE}/", issuer.sign)
    helpers = [await _run_app(issuer.app(login), ISSUER_PORT), await _run_app(echo_app(), UPSTREAM_PORT)]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with running_services(config, sts_client=aws.sts_client_factory() if aws else None) as services:
            listeners = Listeners(services)
            await listeners.start()
            print(instructions(config.audit.path), flush=True)
            if aws is not None:
                print(local_aws.instructions(aws, f"http://{HOST}:{ISSUER_PORT}", f"http://{HOST}:{PROXY_PORT}",
                                             (workdir / "token").resolve(), anchor_key_path(workdir)), flush=True)
            await stop.wait()
            await listeners.stop()
    finally:
        for runner in helpers:
            await runner.cleanup()
