"""idgate with browser login in front of a recording upstream, logged into by the real OP's code flow: the
stack the browser-login tests share, and the steps of a login they take one hop at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from proxy.aws.gateway_keys import new_key_ring_text
from proxy.core.errors import StartupError
from tests.harness.browserless import browser_session, login_at_op
from tests.harness.oidc_provider import OidcProvider, WebClient
from tests.harness.processes import HOST, free_port
from tests.harness.servers import RecordingUpstream, RunningIdgate, running_idgate, serve_app

PORT_ATTEMPTS = 3
NAVIGATE = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Site": "none", "Accept": "text/html"}
SESSION_COOKIE = "__Host-idgate-session"


def login_policy(directory: Path, issuer: str) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "app.yaml").write_text(f"""\
rules:
  - id: data-eng-use-the-app
    who: {{issuer: "{issuer}", groups: [data-eng]}}
    http:
      - methods: [GET, HEAD, POST]
        paths: ["/app", "/app/**"]
""")
    return directory


@dataclass
class LoginStack:
    idgate: RunningIdgate
    upstream: RecordingUpstream
    client: WebClient
    op: OidcProvider

    @property
    def url(self) -> str:
        return self.idgate.url

    def browser(self) -> aiohttp.ClientSession:
        return browser_session(secure_origins=[self.url])

    async def records(self, event: str | None = None) -> list[dict[str, Any]]:
        return [r for r in await self.idgate.audit_records() if event is None or r["event"] == event]

    async def start_login(self, browser: aiohttp.ClientSession, path: str = "/app/page") -> str:
        """A page load that is sent to the OP: the authorization URL idgate redirected to."""
        async with browser.get(self.url + path, headers=NAVIGATE, allow_redirects=False) as response:
            assert response.status == 302, await response.text()
            return response.headers["Location"]

    async def log_in(self, browser: aiohttp.ClientSession, user: str = "alice", path: str = "/app/page") -> str:
        """The whole login: the URL idgate's callback redirected the browser back to."""
        callback = await login_at_op(browser, await self.start_login(browser, path), user)
        async with browser.get(callback, allow_redirects=False) as response:
            assert response.status == 303, await response.text()
            return response.headers["Location"]


def write_login_config(tmp: Path, op: OidcProvider, client: WebClient, port: int, upstream_port: int,
                       route: dict[str, Any] | None = None, *, key_file: Path | None = None,
                       **login: Any) -> Path:
    """idgate.yaml (and its policies, client secret and, unless `key_file` is given, a new session key
    ring) in `tmp`; `route` adds to the login route, `login` to the login: section (e.g. store=...)."""
    if key_file is None:
        key_file = new_session_keys(tmp / "session-keys.json")
    secret_file = tmp / "client-secret"
    secret_file.write_text(client.client_secret or "")
    config = {
        "listen": {"host": HOST, "port": port},
        "admin": {"host": HOST, "port": 0},
        "issuers": [{"issuer": op.issuer, "audiences": ["https://orders.internal"], "client": {
            "id": client.client_id, "redirect_uris": list(client.redirect_uris),
            "secret_file": str(secret_file), "scopes": ["openid", "groups"],
            "post_logout_redirect_uri": f"http://{HOST}:{port}/"}}],
        "policies_dir": str(login_policy(tmp / "policies", op.issuer)),
        "routes": [{"name": "app", "upstream": f"http://{HOST}:{upstream_port}", "login": True, **(route or {})}],
        "audit": {"path": str(tmp / "audit" / "audit.jsonl")},
        "login": {"key_file": str(key_file), **login},
    }
    path = tmp / "idgate.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def new_session_keys(path: Path) -> Path:
    path.write_text(new_key_ring_text())
    path.chmod(0o600)
    return path


@asynccontextmanager
async def login_stack(op: OidcProvider, tmp: Path, route: dict[str, Any] | None = None,
                      **login: Any) -> AsyncIterator[LoginStack]:
    """`route`: more settings of the login route (e.g. websocket); `login`: of the login: section.  The port
    is chosen before idgate binds it (the OP client must name it first), so another process may take it in
    between: then a new port, a few times."""
    upstream = RecordingUpstream()
    async with serve_app(upstream.app()) as upstream_port, AsyncExitStack() as exits:
        upstream.port = upstream_port
        for attempt in range(PORT_ATTEMPTS):
            port = free_port()
            base = f"http://{HOST}:{port}"
            client = op.register_web_client([base + "/.idgate/callback"], post_logout_redirect_uris=[base + "/"],
                                            backchannel_logout_uri=base + "/.idgate/backchannel-logout")
            config = write_login_config(tmp, op, client, port, upstream_port, route, **login)
            try:
                idgate = await exits.enter_async_context(running_idgate(config))
            except StartupError:
                if attempt == PORT_ATTEMPTS - 1:
                    raise
                continue
            yield LoginStack(idgate, upstream, client, op)
            return


def shared_browser(stacks: list[LoginStack]) -> aiohttp.ClientSession:
    """One browser for several instances on one host: its cookies (per host, not per port) reach them all."""
    return browser_session(secure_origins=[stack.url for stack in stacks])


@asynccontextmanager
async def shared_store_stacks(op: OidcProvider, tmp: Path, store: dict[str, Any],
                              count: int = 2) -> AsyncIterator[list[LoginStack]]:
    """`count` idgate instances, each on its own port with its own config and audit log, sharing what
    replicas behind a load balancer share: the session store (`store`, the login.store section), the
    session key ring, one OP client (a redirect URI per instance; the back-channel logout URI is the first
    instance's, so the OP's logout calls reach that one only) and the upstream."""
    ports = [free_port() for _ in range(count)]
    bases = [f"http://{HOST}:{port}" for port in ports]
    client = op.register_web_client([base + "/.idgate/callback" for base in bases],
                                    post_logout_redirect_uris=[base + "/" for base in bases],
                                    backchannel_logout_uri=bases[0] + "/.idgate/backchannel-logout")
    key_file = new_session_keys(tmp / "session-keys.json")
    upstream = RecordingUpstream()
    async with serve_app(upstream.app()) as upstream_port, AsyncExitStack() as running:
        upstream.port = upstream_port
        stacks = []
        for i, port in enumerate(ports):
            directory = tmp / f"idgate-{i}"
            directory.mkdir()
            config = write_login_config(directory, op, client, port, upstream_port, key_file=key_file, store=store)
            idgate = await running.enter_async_context(running_idgate(config))
            stacks.append(LoginStack(idgate, upstream, client, op))
        yield stacks
