"""Starts and drives the real OpenID Provider of tests/harness/oidc_provider_node (node, oidc-provider 9.x): free
loopback port, polled readiness, tokens over HTTP, web clients registered for the code flow (the browser's part is
tests/harness/browserless.py), key rotation, JWKS outage and token lifetime switches."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.processes import ManagedServer, ServerProcess

OP_DIR = Path(__file__).resolve().parent / "oidc_provider_node"
DEFAULT_CONFIG = OP_DIR / "clients.json"
HTTP_TIMEOUT = 10.0
# Loopback only: never route the tests' requests through a proxy named in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class OidcProviderError(RuntimeError):
    """The provider could not be started or refused a request; the message carries its log tail."""


@dataclass(frozen=True, slots=True)
class WebClient:
    """A client registered for the authorization code flow; client_secret is None for a public client
    (auth_method "none")."""

    client_id: str
    client_secret: str | None
    auth_method: str
    redirect_uris: tuple[str, ...]


class OidcProvider(ManagedServer):
    """One node OpenID Provider process.  Use as a context manager, or call start() and stop()."""

    def __init__(self, *, config: Path = DEFAULT_CONFIG, startup_timeout: float = 30.0) -> None:
        self._config_path = config
        self.config: dict[str, Any] = json.loads(config.read_text())
        self._control_token = secrets.token_urlsafe(24)
        self._server = ServerProcess("oidc-provider", OidcProviderError, startup_timeout=startup_timeout)
        self.port = 0

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- process ------------------------------------------------------------------------------

    def start(self) -> None:
        node = shutil.which("node")
        if node is None:
            raise OidcProviderError("node is not installed; the OIDC integration tests need node >= 20.12")
        if not (OP_DIR / "node_modules" / "oidc-provider").is_dir():
            raise OidcProviderError(
                f"{OP_DIR}/node_modules is missing: run `make test` (it runs `npm ci` there) first")
        env = {**os.environ, "IDGATE_OP_CONTROL_TOKEN": self._control_token}
        # Port 0: the OP binds first and reports the port it got, so no other process can take it
        # between our choosing and its binding.
        self._server.start([node, "server.mjs", "--port", "0", "--config", str(self._config_path)], env=env,
                           cwd=OP_DIR)
        with self._stopped_on_failure():
            self.port = self._server.wait_until(self._reported_port, "listening")
            self._server.wait_until(self._serves_discovery, "serving discovery")

    def _reported_port(self) -> int | None:
        for line in self._server.log_path.read_text(errors="replace").splitlines():
            if line.startswith("READY "):
                return int(line.split()[1])
        return None

    def _serves_discovery(self) -> bool | None:
        try:
            return self._request("GET", "/.well-known/openid-configuration")["issuer"] == self.issuer or None
        except OidcProviderError:
            return None

    # -- tokens -------------------------------------------------------------------------------

    def secret_of(self, client_id: str) -> str:
        for client in self.config["clients"]:
            if client["client_id"] == client_id:
                return str(client["client_secret"])
        raise KeyError(client_id)

    def token(self, client_id: str, resource: str, scope: str | None = None) -> str:
        """A JWT access token for `resource` via client_credentials."""
        form = {"grant_type": "client_credentials", "resource": resource}
        if scope is not None:
            form["scope"] = scope
        return str(self._client_post(client_id, "/token", form)["access_token"])

    def id_token(self, client_id: str = "web-portal", login_hint: str = "alice") -> str:
        """A real ID token (no typ header) via CIBA in poll mode; the OP approves at once."""
        started = self._client_post(client_id, "/backchannel", {"scope": "openid", "login_hint": login_hint})
        tokens = self._client_post(client_id, "/token", {
            "grant_type": "urn:openid:params:grant-type:ciba", "auth_req_id": started["auth_req_id"]})
        return str(tokens["id_token"])

    # -- code flow ----------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        return self._request("GET", "/.well-known/openid-configuration")

    def register_web_client(self, redirect_uris: Sequence[str], *, post_logout_redirect_uris: Sequence[str] = (),
                            backchannel_logout_uri: str | None = None,
                            auth_method: str = "client_secret_basic") -> WebClient:
        """Registers a code-flow client (Dynamic Client Registration) once its URIs are known: grants
        authorization_code and refresh_token, response type code; with a back-channel logout URI, its
        logout tokens and ID tokens carry sid."""
        metadata: dict[str, Any] = {
            "application_type": "web", "redirect_uris": list(redirect_uris),
            "post_logout_redirect_uris": list(post_logout_redirect_uris),
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
            "token_endpoint_auth_method": auth_method}
        if backchannel_logout_uri is not None:
            metadata |= {"backchannel_logout_uri": backchannel_logout_uri,
                         "backchannel_logout_session_required": True}
        registered = self._request("POST", "/reg", json.dumps(metadata).encode(),
                                   {"Content-Type": "application/json"})
        return WebClient(client_id=str(registered["client_id"]), client_secret=registered.get("client_secret"),
                         auth_method=str(registered["token_endpoint_auth_method"]),
                         redirect_uris=tuple(registered["redirect_uris"]))

    # -- test controls ------------------------------------------------------------------------

    def rotate_keys(self) -> list[str]:
        """Add a new RSA and EC signing key (listed first, signing from now on); returns all kids."""
        return list(self._control("POST", "/__test/rotate")["kids"])

    def outage(self, on: bool) -> None:
        """While on, discovery and the JWKS answer 503 (the token endpoint keeps working)."""
        self._control("POST", "/__test/outage", {"on": on})

    def kids(self) -> list[str]:
        return list(self._control("GET", "/__test/state")["kids"])

    def set_ttls(self, **seconds: int) -> dict[str, int]:
        """Lifetimes of the code flow's AccessToken, IdToken, RefreshToken and AuthorizationCode for what is
        issued from now on; replaces earlier overrides, and no argument restores the defaults (600, 600, 3600
        and 60 s).  Returns the overrides in force."""
        return dict(self._control("POST", "/__test/ttl", seconds)["ttl"])

    def sign(self, payload: dict[str, Any], **header: Any) -> str:
        """A compact JWS of exactly `payload`, signed RS256 with the OP's current key (header fields added or
        replaced by `header`): what a real OP would never issue, for tests of what idgate refuses."""
        return str(self._control("POST", "/__test/sign", {"header": header, "payload": payload})["jws"])

    @contextmanager
    def short_ttls(self, **seconds: int) -> Iterator[None]:
        """set_ttls for a block, defaults again after it: the session-scoped provider is shared."""
        self.set_ttls(**seconds)
        try:
            yield
        finally:
            self.set_ttls()

    # -- http ---------------------------------------------------------------------------------

    def _client_post(self, client_id: str, path: str, form: dict[str, str]) -> dict[str, Any]:
        basic = base64.b64encode(f"{client_id}:{self.secret_of(client_id)}".encode()).decode()
        return self._request("POST", path, urllib.parse.urlencode(form).encode(), {
            "Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"})

    def _control(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        return self._request(method, path, data, {
            "X-Test-Control": self._control_token, "Content-Type": "application/json"})

    def _request(self, method: str, path: str, data: bytes | None = None,
                 headers: dict[str, str] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(self.issuer + path, data=data, method=method, headers=headers or {})
        try:
            with _OPENER.open(request, timeout=HTTP_TIMEOUT) as response:
                result: dict[str, Any] = json.loads(response.read())
                return result
        except urllib.error.HTTPError as exc:
            raise OidcProviderError(f"{method} {path}: HTTP {exc.code} {exc.read()[:500]!r}") from exc
        except OSError as exc:    # refused, reset or timed out: the OP's own log may say why
            raise OidcProviderError(f"{method} {path}: {exc!r}; the OP's log ends:\n{self._server.log_tail(20)}") from exc
