"""Browser login through the real OpenID Provider (npm oidc-provider, code flow with PKCE): a person's page
load goes to login, comes back with a session, reaches the upstream as the same identity a bearer token
would, and ends with logout; every step is on the audit log."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import aiohttp
from yarl import URL
import pytest

from tests.harness.browserless import end_session_at_op, login_at_op
from tests.harness.login import NAVIGATE, SESSION_COOKIE, LoginStack, login_stack


@pytest.fixture
async def stack(oidc_provider, tmp_path) -> AsyncIterator[LoginStack]:
    async with login_stack(oidc_provider, tmp_path) as running:
        yield running


async def test_a_page_load_logs_in_and_reaches_the_upstream_as_the_user(stack):
    async with stack.browser() as browser:
        authorize = await stack.start_login(browser)
        query = parse_qs(urlsplit(authorize).query)
        assert authorize.startswith(stack.op.issuer + "/auth?")
        assert query["code_challenge_method"] == ["S256"] and query["response_type"] == ["code"]
        assert query["client_id"] == [stack.client.client_id] and query["state"] and query["nonce"]
        assert stack.upstream.received == []

        callback = await login_at_op(browser, authorize, "alice")
        async with browser.get(callback, allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/app/page"
            assert SESSION_COOKIE in response.cookies
            morsel = response.cookies[SESSION_COOKIE]
            assert morsel["secure"] and morsel["httponly"] and morsel["samesite"] == "Lax" and morsel["path"] == "/"
            assert not morsel["domain"]

        async with browser.get(stack.url + "/app/page", headers=NAVIGATE, allow_redirects=False) as response:
            assert response.status == 200
        seen = stack.upstream.received[-1]
        assert seen.header("X-Idgate-Subject") == ["alice"]
        assert seen.header("X-Idgate-Issuer") == [stack.op.issuer]
        assert "data-eng" in seen.header("X-Idgate-Groups")[0]
        assert seen.header("X-Idgate-Assertion")
        # idgate's cookies never reach the upstream; the OP's (same host in this test) still do.
        assert not any("idgate" in value for value in seen.header("Cookie"))

    logins = await stack.records("session")
    assert [r["action"] for r in logins] == ["login"]
    assert logins[0]["identity"]["sub"] == "alice" and len(logins[0]["session"]) == 32
    allowed = [r for r in await stack.records("decision") if r["decision"] == "allow"]
    assert allowed[-1]["session"] == logins[0]["session"]
    assert allowed[-1]["rule"] == "data-eng-use-the-app"


async def test_an_api_call_without_credentials_gets_401_not_a_redirect(stack):
    async with stack.browser() as browser:
        async with browser.get(stack.url + "/app/api", headers={"Accept": "application/json"},
                               allow_redirects=False) as response:
            assert response.status == 401
            assert (await response.json())["code"] == "unauthenticated"
        async with browser.get(stack.url + "/app/api", headers={"Sec-Fetch-Mode": "cors", "Accept": "text/html"},
                               allow_redirects=False) as response:
            assert response.status == 401
    assert stack.upstream.received == []


async def test_a_bearer_token_still_works_on_a_login_route(stack):
    token = stack.op.id_token()       # any token the issuer's audiences accept; this one is denied by audience
    async with stack.browser() as browser:
        async with browser.get(stack.url + "/app/page", headers={**NAVIGATE, "Authorization": f"Bearer {token}"},
                               allow_redirects=False) as response:
            # A bad bearer token on a page load is a 401, not a login: the caller chose its credential.
            assert response.status == 401
    assert stack.upstream.received == []


async def test_a_user_the_policy_does_not_name_is_403_after_login(stack):
    async with stack.browser() as browser:
        await stack.log_in(browser, user="bob")
        async with browser.get(stack.url + "/app/page", headers=NAVIGATE, allow_redirects=False) as response:
            assert response.status == 403
    assert stack.upstream.received == []
    denied = (await stack.records("decision"))[-1]
    assert denied["identity"]["sub"] == "bob" and denied["reasons"] == ["no_matching_rule"] and denied["session"]


async def test_logout_ends_the_session_here_and_at_the_issuer(stack):
    async with stack.browser() as browser:
        await stack.log_in(browser)
        async with browser.post(stack.url + "/.idgate/logout", headers={"Origin": stack.url},
                                allow_redirects=False) as response:
            assert response.status == 303
            end_session = response.headers["Location"]
            assert end_session.startswith(stack.op.issuer + "/session/end?")
            assert response.cookies[SESSION_COOKIE].value == ""
        after = await end_session_at_op(browser, end_session)
        assert after.startswith(stack.url + "/")
        # The old cookie value, replayed, names no session any more.
        async with browser.get(stack.url + "/app/page", headers=NAVIGATE, allow_redirects=False) as response:
            assert response.status == 302
    assert [r["action"] for r in await stack.records("session")][:2] == ["login", "logout"]


async def test_a_session_refreshes_its_tokens_before_the_id_token_expires(oidc_provider, tmp_path):
    # ID tokens of 5 s and a 60 s refresh margin: every request after login is due for a refresh, so each
    # one uses the refresh token the previous refresh got (the OP rotates them and revokes the grant if an
    # old one comes back).
    with oidc_provider.short_ttls(IdToken=5, AccessToken=5):
        async with login_stack(oidc_provider, tmp_path) as stack, stack.browser() as browser:
            await stack.log_in(browser)
            for _ in range(3):
                async with browser.get(stack.url + "/app/page", headers=NAVIGATE, allow_redirects=False) as response:
                    assert response.status == 200
            sessions = await stack.records("session")
    assert [r["action"] for r in sessions] == ["login", "refresh", "refresh", "refresh"]
    assert len({r["session"] for r in sessions}) == 1
    assert all(r["identity"]["sub"] == "alice" for r in sessions)


async def test_audit_query_finds_a_session_and_what_it_did(stack):
    async with stack.browser() as browser:
        await stack.log_in(browser)
        async with browser.get(stack.url + "/app/page", headers=NAVIGATE, allow_redirects=False) as response:
            assert response.status == 200
    session = (await stack.records("session"))[0]["session"]
    audit = str(stack.idgate.services.config.audit.path)

    def query(*args: str) -> list[dict]:
        done = subprocess.run([sys.executable, "-m", "proxy", "audit", "query", "--format", "jsonl", *args, audit],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == (0 if done.stdout else 1), done.stderr    # 1: nothing found, as grep
        return [json.loads(line) for line in done.stdout.splitlines()]

    assert [r["action"] for r in query("--event", "session")] == ["login"]
    did = query("--session", session)
    assert [r["event"] for r in did] == ["session", "decision", "outcome"]
    assert did[1]["target"]["path"] == "/app/page" and did[1]["decision"] == "allow"
    assert query("--session", "0" * 32) == []
    table = subprocess.run([sys.executable, "-m", "proxy", "audit", "query", "--event", "session", audit],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert " login " in table and "alice" in table


async def test_a_cross_site_websocket_handshake_with_the_cookie_is_refused(oidc_provider, tmp_path):
    # A WebSocket handshake is a GET, but it opens a channel that can change anything: another site's page
    # must not open one with the user's cookie (cross-site WebSocket hijacking).
    async with login_stack(oidc_provider, tmp_path, route={"websocket": True}) as stack, \
            stack.browser() as browser:
        await stack.log_in(browser)
        for origin in ("https://evil.example", "null", f"http://127.0.0.2:{stack.idgate.port}"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await browser.ws_connect(stack.url + "/app/ws", headers={"Origin": origin})
            assert refused.value.status == 403
        assert stack.upstream.received == []
        async with browser.ws_connect(stack.url + "/app/ws", headers={"Origin": stack.url}) as socket_:
            await socket_.send_str("hi")
            assert (await socket_.receive_str()) == "echo:hi"
    refusals = [r for r in await stack.records("decision") if r["decision"] == "deny"]
    # The page load before login, then the three handshakes.
    assert [r["reasons"] for r in refusals] == [["missing_token"]] + [["cross_site_request"]] * 3
    refusals = refusals[1:]
    assert all(r["identity"]["sub"] == "alice" and r["session"] for r in refusals)


async def test_a_new_login_in_the_same_browser_ends_the_session_it_replaces(stack):
    async with stack.browser() as browser:
        await stack.log_in(browser, user="bob")
        bob_cookie = next(c.value for c in browser.cookie_jar if c.key == SESSION_COOKIE)
        # The OP remembers bob; a fresh OP session (its cookies cleared) lets alice log in here.
        browser.cookie_jar.clear(lambda c: not c.key.startswith("__Host-idgate"))
        async with browser.get(stack.url + "/.idgate/login?rd=/app/page", allow_redirects=False) as response:
            assert response.status == 302                     # an explicit login, though a session is held
            authorize = response.headers["Location"]
        async with browser.get(await login_at_op(browser, authorize, "alice"), allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"] == "/app/page"
    async with stack.browser() as other:
        other.cookie_jar.update_cookies({SESSION_COOKIE: bob_cookie}, response_url=URL(stack.url))
        async with other.get(stack.url + "/app/page", headers=NAVIGATE, allow_redirects=False) as response:
            assert response.status == 302                     # bob's session ended with alice's login
    actions = [(r["action"], r["identity"]["sub"]) for r in await stack.records("session")]
    assert actions == [("login", "bob"), ("replaced", "bob"), ("login", "alice")]


async def test_a_frame_is_not_sent_to_login_and_login_cookies_do_not_pile_up(stack):
    async with stack.browser() as browser:
        frame = {**NAVIGATE, "Sec-Fetch-Dest": "iframe"}
        async with browser.get(stack.url + "/app/page", headers=frame, allow_redirects=False) as response:
            assert response.status == 401
        for _ in range(6):
            await stack.start_login(browser)
        pending = [c.key for c in browser.cookie_jar if c.key.startswith("__Host-idgate-login-")]
        assert len(pending) == 4                        # the four newest logins in flight
    assert stack.upstream.received == []


async def test_the_logout_page_cannot_be_framed(stack):
    async with stack.browser() as browser:
        async with browser.get(stack.url + "/.idgate/logout") as response:
            assert response.status == 200 and '<form method="post">' in await response.text()
            assert response.headers["X-Frame-Options"] == "DENY"
            assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
            # No form-action: Chromium applies it to the redirect to the issuer's logout after the POST.
            assert "form-action" not in response.headers["Content-Security-Policy"]


async def test_a_refused_code_does_not_use_up_the_login(stack):
    # Each callback claims its login state once; a claim kept for every code the issuer refuses would let
    # anyone fill the store's claims with junk callbacks (their own login cookies) and stop every login.
    async with stack.browser() as browser:
        callback = await login_at_op(browser, await stack.start_login(browser), "alice")
        query = parse_qs(urlsplit(callback).query)
        junk = callback.replace("code=" + query["code"][0], "code=not-a-code")
        async with browser.get(junk, allow_redirects=False) as response:
            assert response.status == 401
        async with browser.get(callback, allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"] == "/app/page"
        async with browser.get(callback, allow_redirects=False) as response:
            assert response.status == 400            # the login cookie went with the login: a replay is refused
    reasons = [r["reasons"] for r in await stack.records("decision") if r["surface"] == "login"]
    assert reasons == [["code_exchange_failed"], ["login_state_invalid"]]
