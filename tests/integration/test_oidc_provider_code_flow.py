"""The real OpenID Provider as a code-flow IdP, driven by tests/harness/browserless.py with a tiny relying party
played by the test itself: registration, PKCE S256 login with state, nonce and the RFC 9207 iss parameter, the
ID token's claims, rotating refresh tokens, short lifetimes, RP-initiated and back-channel logout."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp import web

from tests.harness.browserless import BrowserlessError, browser_session, end_session_at_op, login_at_op
from tests.harness.oidc_provider import OidcProvider, OidcProviderError, WebClient
from tests.harness.processes import HOST
from tests.harness.servers import serve_app

BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"


@dataclass
class TinyRp:
    """The relying party's redirect_uri, post-logout page and back-channel logout endpoint on one loopback
    port, remembering what reached them."""

    port: int = 0
    callbacks: list[dict[str, list[str]]] = field(default_factory=list)
    logout_tokens: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def app(self) -> web.Application:
        async def callback(request: web.Request) -> web.Response:
            self.callbacks.append(parse_qs(request.query_string))
            return web.Response(text="signed in")

        async def backchannel_logout(request: web.Request) -> web.Response:
            self.logout_tokens.append((await request.post())["logout_token"])  # type: ignore[arg-type]
            return web.Response(status=200)

        async def signed_out(_request: web.Request) -> web.Response:
            return web.Response(text="signed out")

        async def set_host_cookie(_request: web.Request) -> web.Response:
            response = web.Response(text="set")
            response.headers["Set-Cookie"] = "__Host-rp=1; Secure; HttpOnly; Path=/; SameSite=Lax"
            return response

        async def cookies(request: web.Request) -> web.Response:
            return web.json_response(dict(request.cookies))

        app = web.Application()
        app.router.add_get("/callback", callback)
        app.router.add_post("/backchannel-logout", backchannel_logout)
        app.router.add_get("/signed-out", signed_out)
        app.router.add_get("/set-host-cookie", set_host_cookie)
        app.router.add_get("/cookies", cookies)
        return app


@dataclass(frozen=True)
class Authorization:
    url: str
    state: str
    nonce: str
    code_verifier: str


@pytest.fixture
async def rp() -> AsyncIterator[TinyRp]:
    tiny = TinyRp()
    async with serve_app(tiny.app()) as port:
        tiny.port = port
        yield tiny


@pytest.fixture
def client(oidc_provider: OidcProvider, rp: TinyRp) -> WebClient:
    return oidc_provider.register_web_client(
        [rp.url + "/callback"], post_logout_redirect_uris=[rp.url + "/signed-out"],
        backchannel_logout_uri=rp.url + "/backchannel-logout")


@pytest.fixture
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    async with browser_session() as session:
        yield session


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """The relying party's own back-end calls (token endpoint, JWKS): no cookies, no browser."""
    async with aiohttp.ClientSession(trust_env=False) as session:
        yield session


def authorization(op: OidcProvider, client: WebClient, scope: str = "openid groups", **extra: str) -> Authorization:
    state, nonce, verifier = secrets.token_urlsafe(16), secrets.token_urlsafe(16), secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = {"client_id": client.client_id, "response_type": "code", "redirect_uri": client.redirect_uris[0],
             "scope": scope, "state": state, "nonce": nonce, "code_challenge": challenge,
             "code_challenge_method": "S256"} | extra
    return Authorization(f"{op.discovery()['authorization_endpoint']}?{urlencode(query)}", state, nonce, verifier)


def query_of(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


async def token_request(http: aiohttp.ClientSession, op: OidcProvider, client: WebClient,
                        form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    headers: dict[str, str] = {}
    if client.auth_method == "client_secret_basic":
        headers["Authorization"] = aiohttp.encode_basic_auth(client.client_id, client.client_secret or "")
    elif client.auth_method == "client_secret_post":
        form = form | {"client_id": client.client_id, "client_secret": client.client_secret or ""}
    else:
        form = form | {"client_id": client.client_id}
    async with http.post(op.discovery()["token_endpoint"], data=form, headers=headers) as response:
        return response.status, await response.json()


async def exchange(http: aiohttp.ClientSession, op: OidcProvider, client: WebClient, callback_url: str,
                   flow: Authorization) -> dict[str, Any]:
    status, tokens = await token_request(http, op, client, {
        "grant_type": "authorization_code", "code": query_of(callback_url)["code"],
        "redirect_uri": client.redirect_uris[0], "code_verifier": flow.code_verifier})
    assert status == 200, tokens
    return tokens


async def verified_claims(http: aiohttp.ClientSession, op: OidcProvider, token: str, audience: str) -> dict[str, Any]:
    """The token's claims once its signature checks against the OP's published JWKS."""
    async with http.get(op.discovery()["jwks_uri"]) as response:
        keys = jwt.PyJWKSet.from_dict(await response.json())
    header = jwt.get_unverified_header(token)
    key = next(k for k in keys.keys if k.key_id == header["kid"])
    claims: dict[str, Any] = jwt.decode(token, key.key, algorithms=[header["alg"]], audience=audience,
                                        issuer=op.issuer)
    return claims


async def signed_in(browser: aiohttp.ClientSession, http: aiohttp.ClientSession, op: OidcProvider,
                    client: WebClient, username: str = "alice") -> dict[str, Any]:
    flow = authorization(op, client)
    return await exchange(http, op, client, await login_at_op(browser, flow.url, username), flow)


def test_discovery_advertises_the_code_flow(oidc_provider: OidcProvider) -> None:
    discovery = oidc_provider.discovery()
    assert discovery["authorization_response_iss_parameter_supported"] is True
    assert discovery["code_challenge_methods_supported"] == ["S256"]
    assert discovery["response_types_supported"] == ["code"]
    assert discovery["backchannel_logout_supported"] is True
    assert discovery["backchannel_logout_session_supported"] is True
    assert {"end_session_endpoint", "registration_endpoint"} <= discovery.keys()
    assert {"client_secret_basic", "client_secret_post", "none"} == set(
        discovery["token_endpoint_auth_methods_supported"])


async def test_code_flow_login_yields_an_id_token_with_the_users_groups(
        oidc_provider: OidcProvider, client: WebClient, rp: TinyRp, browser: aiohttp.ClientSession,
        http: aiohttp.ClientSession) -> None:
    flow = authorization(oidc_provider, client)
    callback = await login_at_op(browser, flow.url, "alice")

    assert callback.startswith(rp.url + "/callback?")
    params = query_of(callback)
    assert params["state"] == flow.state and params["iss"] == oidc_provider.issuer
    async with browser.get(callback, allow_redirects=False) as response:   # the browser lands at the RP
        assert response.status == 200
    assert [{k: v[0] for k, v in c.items()} for c in rp.callbacks] == [params]

    tokens = await exchange(http, oidc_provider, client, callback, flow)
    assert tokens["token_type"] == "Bearer" and tokens["refresh_token"]
    claims = await verified_claims(http, oidc_provider, tokens["id_token"], client.client_id)
    assert claims["iss"] == oidc_provider.issuer and claims["aud"] == client.client_id
    assert claims["sub"] == "alice" and claims["nonce"] == flow.nonce
    assert claims["groups"] == ["data-eng"] and claims["sid"]
    assert claims["exp"] - claims["iat"] == 600


async def test_a_second_login_in_the_same_browser_needs_no_form(
        oidc_provider: OidcProvider, client: WebClient, browser: aiohttp.ClientSession,
        http: aiohttp.ClientSession) -> None:
    first = await signed_in(browser, http, oidc_provider, client, "bob")
    # The OP session cookie signs bob in again: the username given now is never asked for.
    again = await signed_in(browser, http, oidc_provider, client, "alice")
    first_claims = await verified_claims(http, oidc_provider, first["id_token"], client.client_id)
    again_claims = await verified_claims(http, oidc_provider, again["id_token"], client.client_id)
    assert first_claims["sub"] == again_claims["sub"] == "bob"
    assert again_claims["groups"] == ["reporting", "auditors"]
    assert first_claims["sid"] == again_claims["sid"]


async def test_the_code_needs_its_verifier(oidc_provider: OidcProvider, client: WebClient,
                                           browser: aiohttp.ClientSession, http: aiohttp.ClientSession) -> None:
    flow = authorization(oidc_provider, client)
    code = query_of(await login_at_op(browser, flow.url, "alice"))["code"]
    status, body = await token_request(http, oidc_provider, client, {
        "grant_type": "authorization_code", "code": code, "redirect_uri": client.redirect_uris[0],
        "code_verifier": secrets.token_urlsafe(48)})
    assert status == 400 and body["error"] == "invalid_grant"


async def test_an_authorization_without_pkce_is_refused(oidc_provider: OidcProvider, client: WebClient,
                                                        browser: aiohttp.ClientSession) -> None:
    flow = authorization(oidc_provider, client)
    without_pkce = {k: v for k, v in query_of(flow.url).items() if not k.startswith("code_challenge")}
    url = f"{oidc_provider.discovery()['authorization_endpoint']}?{urlencode(without_pkce)}"
    refused = query_of(await login_at_op(browser, url, "alice"))
    assert refused["error"] == "invalid_request" and "code" not in refused
    assert refused["iss"] == oidc_provider.issuer and refused["state"] == flow.state


async def test_an_unregistered_redirect_uri_gets_an_error_page_not_a_redirect(
        oidc_provider: OidcProvider, client: WebClient, rp: TinyRp, browser: aiohttp.ClientSession) -> None:
    flow = authorization(oidc_provider, client, redirect_uri=rp.url + "/elsewhere")
    with pytest.raises(BrowserlessError, match="HTTP 400: .*redirect_uri did not match"):
        await login_at_op(browser, flow.url, "alice")


async def test_an_unknown_user_is_refused(oidc_provider: OidcProvider, client: WebClient, rp: TinyRp,
                                          browser: aiohttp.ClientSession) -> None:
    flow = authorization(oidc_provider, client)
    callback = await login_at_op(browser, flow.url, "mallory")
    assert callback.startswith(rp.url + "/callback?")
    refused = query_of(callback)
    assert refused["error"] == "access_denied" and "code" not in refused
    assert refused["state"] == flow.state and refused["iss"] == oidc_provider.issuer


async def test_refresh_rotates_the_refresh_token(oidc_provider: OidcProvider, client: WebClient,
                                                 browser: aiohttp.ClientSession, http: aiohttp.ClientSession) -> None:
    with oidc_provider.short_ttls(IdToken=5, AccessToken=5):
        tokens = await signed_in(browser, http, oidc_provider, client)
        assert tokens["expires_in"] == 5
        status, refreshed = await token_request(http, oidc_provider, client, {
            "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert status == 200, refreshed
    assert refreshed["access_token"] != tokens["access_token"]
    assert refreshed["refresh_token"] != tokens["refresh_token"]
    claims = await verified_claims(http, oidc_provider, refreshed["id_token"], client.client_id)
    assert claims["sub"] == "alice" and claims["groups"] == ["data-eng"] and claims["exp"] - claims["iat"] == 5

    status, body = await token_request(http, oidc_provider, client, {
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert status == 400 and body["error"] == "invalid_grant"


async def test_ttls_go_back_to_the_defaults(oidc_provider: OidcProvider) -> None:
    assert oidc_provider.set_ttls(RefreshToken=30) == {"RefreshToken": 30}
    assert oidc_provider.set_ttls() == {}
    with pytest.raises(OidcProviderError, match="unknown ttl"):
        oidc_provider.set_ttls(Session=5)


def test_a_control_call_the_op_cannot_answer_says_what_its_log_ends_with() -> None:
    """A suite run once saw a key rotation's control call fail and every later test of the shared OP with
    it, with nothing to say why: a call that gets no HTTP answer names the OP's log, not just a refusal."""
    with OidcProvider() as provider:
        provider.kids()
        os.kill(provider.process.pid, signal.SIGKILL)
        with pytest.raises(OidcProviderError, match="exited"):     # polls until the kill has taken
            provider.process.wait_until(lambda: None, "killed")
        with pytest.raises(OidcProviderError, match=r"(?s)POST /__test/rotate: .*the OP's log ends:.*READY "):
            provider.rotate_keys()


async def test_rp_initiated_logout_calls_the_back_channel(oidc_provider: OidcProvider, client: WebClient, rp: TinyRp,
                                                         browser: aiohttp.ClientSession,
                                                         http: aiohttp.ClientSession) -> None:
    tokens = await signed_in(browser, http, oidc_provider, client)
    sid = (await verified_claims(http, oidc_provider, tokens["id_token"], client.client_id))["sid"]
    end_session = oidc_provider.discovery()["end_session_endpoint"] + "?" + urlencode({
        "id_token_hint": tokens["id_token"], "post_logout_redirect_uri": rp.url + "/signed-out",
        "state": "bye-1"})

    assert await end_session_at_op(browser, end_session) == rp.url + "/signed-out?state=bye-1"

    assert len(rp.logout_tokens) == 1, oidc_provider.log_tail()
    logout_token = rp.logout_tokens[0]
    claims = await verified_claims(http, oidc_provider, logout_token, client.client_id)
    assert claims["events"] == {BACKCHANNEL_LOGOUT_EVENT: {}}
    assert claims["sid"] == sid and claims["sub"] == "alice" and claims["jti"]
    assert "nonce" not in claims
    # The refresh token ended with the OP session.
    status, body = await token_request(http, oidc_provider, client, {
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert status == 400 and body["error"] == "invalid_grant"
    # And the browser is asked to sign in again: whoever signs in now is who the ID token names.
    again = await signed_in(browser, http, oidc_provider, client, "bob")
    assert (await verified_claims(http, oidc_provider, again["id_token"], client.client_id))["sub"] == "bob"


async def test_public_client_uses_pkce_alone(oidc_provider: OidcProvider, rp: TinyRp, browser: aiohttp.ClientSession,
                                             http: aiohttp.ClientSession) -> None:
    public = oidc_provider.register_web_client([rp.url + "/callback"], auth_method="none")
    assert public.client_secret is None
    tokens = await signed_in(browser, http, oidc_provider, public)
    claims = await verified_claims(http, oidc_provider, tokens["id_token"], public.client_id)
    assert claims["sub"] == "alice" and "sid" not in claims   # no back-channel logout URI, so no sid


async def test_client_secret_post_is_accepted(oidc_provider: OidcProvider, rp: TinyRp,
                                              browser: aiohttp.ClientSession, http: aiohttp.ClientSession) -> None:
    posting = oidc_provider.register_web_client([rp.url + "/callback"], auth_method="client_secret_post")
    assert (await signed_in(browser, http, oidc_provider, posting))["id_token"]


async def test_offline_access_outlives_the_op_session(oidc_provider: OidcProvider, client: WebClient,
                                                      browser: aiohttp.ClientSession,
                                                      http: aiohttp.ClientSession) -> None:
    """offline_access is granted only when consent is prompted for (OIDC Core 11); its refresh token is not
    revoked by RP-initiated logout, unlike the session-bound one above."""
    flow = authorization(oidc_provider, client, "openid groups offline_access", prompt="consent")
    tokens = await exchange(http, oidc_provider, client, await login_at_op(browser, flow.url, "alice"), flow)
    assert tokens["scope"] == "openid groups offline_access"
    end_session = oidc_provider.discovery()["end_session_endpoint"] + "?" + urlencode(
        {"id_token_hint": tokens["id_token"]})
    assert await end_session_at_op(browser, end_session) == oidc_provider.issuer + "/session/end/success"
    status, refreshed = await token_request(http, oidc_provider, client, {
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert status == 200 and refreshed["scope"] == "openid groups offline_access"


@pytest.mark.parametrize("secure", [True, False])
async def test_a_secure_cookie_goes_back_over_http_only_to_a_secure_origin(rp: TinyRp, secure: bool) -> None:
    """What a relying party's __Host- session cookie needs from the browser on http://127.0.0.1."""
    async with browser_session([rp.url] if secure else []) as session:
        async with session.get(rp.url + "/set-host-cookie", allow_redirects=False) as response:
            assert response.status == 200
        async with session.get(rp.url + "/cookies", allow_redirects=False) as response:
            sent = await response.json()
    assert sent == ({"__Host-rp": "1"} if secure else {})
