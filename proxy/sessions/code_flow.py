"""The OAuth side of browser login with one issuer: its endpoints (from discovery), the authorization URL
(PKCE S256, state, nonce), the code and refresh-token exchanges at its token endpoint, and the URL of its
RP-initiated logout.  Answers are checked here; the ID token itself is verified by proxy.oidc."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import yarl

from proxy.config import IssuerConfig
from proxy.config.schema import OidcClientConfig
from proxy.core.errors import AuthenticationError, ConfigError, ConfigProblem, DependencyError
from proxy.core.reasons import Reason
from proxy.oidc.fetch import FetchError, get_json, post_form

MAX_SECRET_BYTES = 4096
PKCE_METHOD = "S256"
MAX_REFRESH_TOKEN_CHARS = 4096      # what a session may keep of the issuer's refresh token


@dataclass(frozen=True, slots=True)
class Endpoints:
    authorization: str
    token: str
    end_session: str | None
    iss_parameter: bool               # RFC 9207: the issuer says it sends `iss` with every authorization response


@dataclass(frozen=True, slots=True)
class Tokens:
    id_token: str
    refresh_token: str | None


@dataclass(frozen=True, slots=True)
class LoginStart:
    """What one login needs to remember until the browser comes back (sealed in its cookie)."""

    state: str
    nonce: str
    verifier: str                     # the PKCE code verifier

    @staticmethod
    def new() -> LoginStart:
        return LoginStart(secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(48))

    @property
    def challenge(self) -> str:
        digest = hashlib.sha256(self.verifier.encode("ascii")).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class CodeFlowClient:
    """The client idgate is at one issuer."""

    def __init__(self, issuer: IssuerConfig, client: OidcClientConfig, secret: str | None,
                 session: aiohttp.ClientSession) -> None:
        self.issuer = issuer.issuer
        self.config = client
        self._secret = secret
        self._session = session
        self._endpoints: Endpoints | None = None
        self._lock = asyncio.Lock()

    async def endpoints(self) -> Endpoints:
        """From the discovery document, fetched once (again after a failure); DependencyError when it cannot be."""
        if self._endpoints is not None:
            return self._endpoints
        async with self._lock:
            if self._endpoints is None:
                try:
                    self._endpoints = _endpoints_of(
                        await get_json(self._session, self.issuer.rstrip("/") + "/.well-known/openid-configuration"),
                        self.issuer)
                except FetchError as exc:
                    raise DependencyError(f"the issuer's discovery document is unavailable ({exc})",
                                          reason=Reason.ISSUER_UNAVAILABLE) from exc
            return self._endpoints

    async def authorization_url(self, start: LoginStart, redirect_uri: str) -> str:
        endpoints = await self.endpoints()
        query = urlencode({
            "response_type": "code", "client_id": self.config.id, "redirect_uri": redirect_uri,
            "scope": " ".join(self.config.scopes), "state": start.state, "nonce": start.nonce,
            "code_challenge": start.challenge, "code_challenge_method": PKCE_METHOD,
        }, quote_via=quote)
        separator = "&" if yarl.URL(endpoints.authorization).query_string else "?"
        return endpoints.authorization + separator + query

    async def exchange_code(self, code: str, start: LoginStart, redirect_uri: str) -> Tokens:
        return await self._token_request({"grant_type": "authorization_code", "code": code,
                                          "redirect_uri": redirect_uri, "code_verifier": start.verifier},
                                         failure=Reason.CODE_EXCHANGE_FAILED)

    async def refresh(self, refresh_token: str) -> Tokens:
        """New tokens; AuthenticationError(session_revoked) when the issuer refuses the refresh token,
        DependencyError when it cannot be asked."""
        return await self._token_request({"grant_type": "refresh_token", "refresh_token": refresh_token},
                                         failure=Reason.SESSION_REVOKED)

    async def end_session_url(self, id_token: str | None) -> str | None:
        """The issuer's RP-initiated logout for this session, or None when the issuer has none."""
        try:
            endpoints = await self.endpoints()
        except DependencyError:
            return None       # logging out locally must not depend on the issuer being up
        if endpoints.end_session is None:
            return None
        params = {"client_id": self.config.id}
        if id_token is not None:
            params["id_token_hint"] = id_token
        if self.config.post_logout_redirect_uri is not None:
            params["post_logout_redirect_uri"] = self.config.post_logout_redirect_uri
        separator = "&" if yarl.URL(endpoints.end_session).query_string else "?"
        return endpoints.end_session + separator + urlencode(params, quote_via=quote)

    async def _token_request(self, form: dict[str, str], *, failure: Reason) -> Tokens:
        endpoints = await self.endpoints()
        headers: dict[str, str] = {}
        method = self.config.auth_method
        if method == "client_secret_basic":
            # RFC 6749 §2.3.1: each half form-encoded before the Basic encoding.
            pair = f"{quote(self.config.id, safe='')}:{quote(self._secret or '', safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        elif method == "client_secret_post":
            form |= {"client_id": self.config.id, "client_secret": self._secret or ""}
        else:
            form |= {"client_id": self.config.id}
        try:
            status, answer = await post_form(self._session, endpoints.token, form, headers)
        except FetchError as exc:
            raise DependencyError(f"the issuer's token endpoint is unavailable ({exc})",
                                  reason=Reason.ISSUER_UNAVAILABLE) from exc
        if status >= 500:
            raise DependencyError(f"the issuer's token endpoint answered {status}", reason=Reason.ISSUER_UNAVAILABLE)
        if status != 200 or not isinstance(answer, dict):
            error = answer.get("error") if isinstance(answer, dict) else None
            # The error code only (a registered OAuth word), never the description: it may echo what was sent.
            shown = error if isinstance(error, str) and error.isascii() and error.isidentifier() else "an error"
            raise AuthenticationError(f"the issuer refused the {form['grant_type']} grant ({shown})", reason=failure)
        return _tokens_of(answer, failure)


def _endpoints_of(document: Any, issuer: str) -> Endpoints:
    if not isinstance(document, dict) or document.get("issuer") != issuer:
        raise FetchError("discovery document names another issuer")   # OIDC Discovery §4.3

    def url(name: str, required: bool) -> str | None:
        value = document.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or yarl.URL(value).scheme not in ("https", "http") or not yarl.URL(value).host:
            raise FetchError(f"discovery document has no usable {name}")
        return value

    methods = document.get("code_challenge_methods_supported")
    if isinstance(methods, list) and PKCE_METHOD not in methods:
        raise FetchError("the issuer does not support PKCE with S256")
    authorization, token = url("authorization_endpoint", True), url("token_endpoint", True)
    assert authorization is not None and token is not None
    return Endpoints(authorization, token, url("end_session_endpoint", False),
                     document.get("authorization_response_iss_parameter_supported") is True)


def _tokens_of(answer: dict[str, Any], failure: Reason) -> Tokens:
    id_token, refresh_token = answer.get("id_token"), answer.get("refresh_token")
    token_type = answer.get("token_type")
    if not isinstance(id_token, str) or not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise AuthenticationError("the issuer's token answer has no ID token", reason=failure)
    if refresh_token is not None and (not isinstance(refresh_token, str) or
                                      not 0 < len(refresh_token) <= MAX_REFRESH_TOKEN_CHARS):
        raise AuthenticationError("the issuer's refresh token is not usable", reason=failure)
    return Tokens(id_token, refresh_token)


def load_client_secret(client: OidcClientConfig) -> str | None:
    """The secret of a confidential client, read from its file (stripped of a trailing newline)."""
    if client.secret_file is None:
        return None
    path: Path = client.secret_file
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(path), None, f"cannot read: {exc.strerror}")]) from exc
    try:
        secret = raw.decode().rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem(str(path), None, "the client secret is not UTF-8")]) from exc
    if not secret or len(raw) > MAX_SECRET_BYTES:
        raise ConfigError([ConfigProblem(str(path), None, "the client secret file is empty or too large")])
    return secret
