"""Attacks on browser login, each through the real OP (npm oidc-provider) and idgate's real listener with a
browser's cookie jar: the login state cookie (tampered, replayed, expired, absent, another login's), a code
or callback from another browser (login CSRF, code injection), the authorization response's `iss`, open
redirects, session fixation and cookie tossing, CSRF of logout and of the upstream, back-channel logout
tokens that must not end anything, sessions replayed after they ended, and idgate's cookies kept from the
upstream both ways.  Every refusal shows its clear error, that nothing leaked (no upstream request, no
session cookie set) and the audit entry of the denial."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from yarl import URL

from proxy.sessions.manager import BACKCHANNEL_EVENT, LOGIN_COOKIE_PREFIX as LOGIN_PREFIX, login_cookie_name
from tests.harness.browserless import end_session_at_op, login_at_op
from tests.harness.login import NAVIGATE, SESSION_COOKIE, LoginStack, login_stack
from tests.harness.oidc_provider import OidcProvider
from tests.harness.processes import eventually
from tests.harness.servers import raw_http

EVIL = "https://evil.example"


@pytest.fixture
async def stack(oidc_provider, tmp_path) -> AsyncIterator[LoginStack]:
    async with login_stack(oidc_provider, tmp_path) as running:
        yield running


@pytest.fixture
def other_op() -> Iterator[OidcProvider]:
    """A second real OP process: another issuer, with its own keys, that idgate does not trust."""
    with OidcProvider() as provider:
        yield provider


# -- helpers ------------------------------------------------------------------------------------


def plain_client() -> aiohttp.ClientSession:
    """A client that sends exactly the Cookie header a test gives it (no jar)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)


def jar_cookies(stack: LoginStack, browser: aiohttp.ClientSession) -> dict[str, str]:
    return {name: morsel.value for name, morsel in browser.cookie_jar.filter_cookies(URL(stack.url)).items()}


def login_cookie(stack: LoginStack, browser: aiohttp.ClientSession, state: str | None = None) -> tuple[str, str]:
    """The (name, value) of the login cookie the jar holds (the one of `state` when there are several)."""
    held = {n: v for n, v in jar_cookies(stack, browser).items() if n.startswith(LOGIN_PREFIX)}
    if state is not None:
        return login_cookie_name(state), held[login_cookie_name(state)]
    assert len(held) == 1, held
    return next(iter(held.items()))


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def with_query(url: str, **changes: str | None) -> str:
    """`url` with its query parameters changed (None removes one)."""
    query = query_of(url)
    for name, value in changes.items():
        if value is None:
            query.pop(name, None)
        else:
            query[name] = value
    return url.split("?", 1)[0] + "?" + urlencode(query)


async def pending_callback(stack: LoginStack, browser: aiohttp.ClientSession, user: str = "alice",
                           path: str = "/app/page") -> str:
    """A login started in `browser` and finished at the OP: the callback URL, not yet requested."""
    return await login_at_op(browser, await stack.start_login(browser, path), user)


async def session_of(stack: LoginStack, browser: aiohttp.ClientSession, user: str = "alice") -> str:
    """Logs `browser` in as `user`: its session cookie's value."""
    await stack.log_in(browser, user)
    return jar_cookies(stack, browser)[SESSION_COOKIE]


async def call(client: aiohttp.ClientSession, method: str, url: str | URL, *, cookie: str | None = None,
               headers: dict[str, str] | None = None, **kwargs: Any) -> tuple[int, dict[str, Any], list[str]]:
    """(status, JSON body or {}, Set-Cookie values) of one request, redirects not followed."""
    sent = dict(headers or {})
    if cookie is not None:
        sent["Cookie"] = cookie
    async with client.request(method, url, headers=sent, allow_redirects=False, **kwargs) as response:
        body = await response.json() if response.content_type == "application/json" else {}
        return response.status, body, response.headers.getall("Set-Cookie", [])


async def raw_get(stack: LoginStack, path: str, headers: list[tuple[str, str]]) -> tuple[int, dict[str, Any], list[str]]:
    """`call` for heads an HTTP client would tidy up (several Cookie headers, odd spellings): sent as bytes."""
    head = "".join(f"{name}: {value}\r\n" for name, value in [("Host", URL(stack.url).raw_authority), *headers])
    raw = await raw_http(stack.idgate.port, f"GET {path} HTTP/1.1\r\n{head}Connection: close\r\n\r\n".encode())
    lines = raw.head.split("\r\n")
    set_cookies = [line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("set-cookie:")]
    json_body = raw.body.startswith(b"{")
    return raw.status, (json.loads(raw.body) if json_body else {}), set_cookies


def sets_session(set_cookies: list[str]) -> bool:
    """Whether a response gave the browser a session (a non-empty session cookie)."""
    return any(v.startswith(SESSION_COOKIE + "=") and not v.startswith(SESSION_COOKIE + '="";')
               and not v.startswith(SESSION_COOKIE + "=;") for v in set_cookies)


async def last_denial(stack: LoginStack) -> dict[str, Any]:
    denied = [r for r in await stack.records("decision") if r["decision"] == "deny"]
    assert denied, "the denial is on the audit log"
    return denied[-1]


async def assert_refused(stack: LoginStack, answer: tuple[int, dict[str, Any], list[str]], status: int,
                         reason: str, *, upstream_before: int = 0) -> dict[str, Any]:
    """The clear error, nothing leaked (no session cookie, no upstream request), the denial audited."""
    got, body, set_cookies = answer
    assert got == status, body
    assert body["message"] and body["request_id"], body
    assert not sets_session(set_cookies), set_cookies
    assert len(stack.upstream.received) == upstream_before
    record = await last_denial(stack)
    assert record["reasons"] == [reason], record
    assert record["request_id"] == body["request_id"]
    assert not any(r["action"] == "login" and r["request_id"] == body["request_id"]
                   for r in await stack.records("session"))
    return record


async def elapse(seconds: float) -> None:
    """Let wall-clock time pass (what expires is idgate's clock; nothing to synchronize with)."""
    until = time.time() + seconds
    await eventually(lambda: time.time() >= until, f"{seconds}s passed", timeout=seconds + 5)


async def sessions_alive(stack: LoginStack, cookie: str) -> bool:
    async with plain_client() as client:
        status, _, _ = await call(client, "GET", stack.url + "/app/alive", cookie=f"{SESSION_COOKIE}={cookie}")
    return status == 200


# -- the login state cookie ---------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["flipped_character", "respelled", "another_logins_value",
                                     "session_cookie_value", "empty", "sent_twice", "lower_case_name"])
async def test_a_tampered_login_state_cookie_is_refused(stack, variant):
    async with stack.browser() as browser, stack.browser() as other, plain_client() as client:
        callback = await pending_callback(stack, browser)
        name, value = login_cookie(stack, browser)
        if variant == "another_logins_value":
            await stack.start_login(browser)          # a second login in flight in the same browser
            value = next(v for n, v in jar_cookies(stack, browser).items() if n.startswith(LOGIN_PREFIX) and n != name)
        elif variant == "session_cookie_value":
            value = await session_of(stack, other, "bob")
        tampered = {
            "flipped_character": f"{name}={value[:40]}{'A' if value[40] != 'A' else 'B'}{value[41:]}",
            "respelled": f"{name}={value}=",
            "another_logins_value": f"{name}={value}",
            "session_cookie_value": f"{name}={value}",
            "empty": f"{name}=",
            "sent_twice": f"{name}={value}; {name}={value}",
            "lower_case_name": f"{name.lower()}={value}",
        }[variant]
        answer = await call(client, "GET", callback, cookie=tampered)
        await assert_refused(stack, answer, 400, "login_state_invalid")
        # The refusal did not use up the real login: with its own cookie, the browser still gets in.
        _, own = login_cookie(stack, browser, query_of(callback)["state"])
        genuine = await call(client, "GET", callback, cookie=f"{name}={own}")
        assert genuine[0] == 303 and sets_session(genuine[2])


async def test_a_replayed_login_state_is_refused(stack):
    async with stack.browser() as browser, plain_client() as thief:
        callback = await pending_callback(stack, browser)
        name, value = login_cookie(stack, browser)
        async with browser.get(callback, allow_redirects=False) as response:
            assert response.status == 303
        # The same browser again (its jar cleared the login cookie: sent by hand), then another client
        # that copied cookie and URL.
        for client in (browser, thief):
            answer = await call(client, "GET", callback, cookie=f"{name}={value}")
            await assert_refused(stack, answer, 400, "login_state_replayed")


async def test_a_login_state_is_used_up_by_the_login_it_made_not_by_a_refused_code(stack):
    """A code the issuer refuses uses nothing up (else junk callbacks with self-made login cookies would
    fill the store's claims); the login that succeeds uses the state for good."""
    async with stack.browser() as browser, plain_client() as client:
        callback = await pending_callback(stack, browser)
        name, value = login_cookie(stack, browser)
        failed = await call(client, "GET", with_query(callback, code="not-the-code"), cookie=f"{name}={value}")
        await assert_refused(stack, failed, 401, "code_exchange_failed")
        logged_in = await call(client, "GET", callback, cookie=f"{name}={value}")
        assert logged_in[0] == 303
        answer = await call(client, "GET", callback, cookie=f"{name}={value}")
        await assert_refused(stack, answer, 400, "login_state_replayed")


async def test_an_expired_login_state_cookie_is_refused(oidc_provider, tmp_path):
    async with login_stack(oidc_provider, tmp_path, login_timeout=1) as stack:
        async with stack.browser() as browser, plain_client() as client:
            callback = await pending_callback(stack, browser)
            name, value = login_cookie(stack, browser)
            await elapse(1.2)
            answer = await call(client, "GET", callback, cookie=f"{name}={value}")
            await assert_refused(stack, answer, 400, "login_state_invalid")


async def test_a_login_state_cookie_from_another_host_is_refused(stack):
    """A login started on one host of this idgate, its cookie and answer brought to another host it serves
    (one whose pages an attacker can script, so can plant a __Host- cookie there): the login belongs to
    the host whose redirect URI it was sent to, and nowhere else."""
    async with stack.browser() as browser, plain_client() as client:
        callback = await pending_callback(stack, browser)
        name, value = login_cookie(stack, browser)
        other_host = f"localhost:{stack.idgate.port}"
        answer = await call(client, "GET", callback, cookie=f"{name}={value}", headers={"Host": other_host})
        await assert_refused(stack, answer, 400, "login_state_invalid")
        genuine = await call(client, "GET", callback, cookie=f"{name}={value}")
        assert genuine[0] == 303 and sets_session(genuine[2])


class CookieStore:
    """A browser's cookies for one host, kept by hand (Set-Cookie applied as a browser does, Max-Age=0
    deleting), so a test sees exactly what a real browser would send back: no jar quirks or caps."""

    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}

    def keep(self, set_cookies: list[str]) -> None:
        for value in set_cookies:
            pair, _, attributes = value.partition(";")
            name, _, cookie = pair.partition("=")
            if "max-age=0" in attributes.lower().replace(" ", ""):
                self.cookies.pop(name.strip(), None)
            else:
                self.cookies[name.strip()] = cookie.strip()

    def header(self) -> str:
        return "; ".join(f"{name}={value}" for name, value in self.cookies.items())


async def test_logins_started_in_many_tabs_cannot_lock_the_browser_out(stack):
    """A dozen tabs sent to login at once (a restored browser, or a site that opens logins in pop-ups, each
    with a long return path): each login cookie is up to 3.5 KB and every request carries them all, so
    the Cookie header would outgrow what idgate (or a proxy in front) accepts, and every request to this
    host, the callback included, would be refused until they expired.  Older logins make room instead."""
    store = CookieStore()
    names = []
    async with plain_client() as tab:
        for i in range(12):
            rd = f"/app/tab{i}/" + "p" * 2000
            async with tab.get(stack.url + "/.idgate/login?" + urlencode({"rd": rd}), allow_redirects=False,
                               headers={**NAVIGATE, **({"Cookie": store.header()} if store.cookies else {})}) as response:
                assert response.status == 302, (i, len(store.header()))
                store.keep(response.headers.getall("Set-Cookie", []))
                names.append(login_cookie_name(query_of(response.headers["Location"])["state"]))
        assert len(store.header()) < 16 * 1024
        assert sorted(store.cookies) == sorted(names[-4:])        # the newest logins are the ones kept
        async with stack.browser() as browser:
            # One more tab's login, finished at the OP, with the cookies the browser holds by now.
            async with tab.get(stack.url + "/.idgate/login?rd=/app/last", headers={"Cookie": store.header()},
                               allow_redirects=False) as response:
                store.keep(response.headers.getall("Set-Cookie", []))
                callback = await login_at_op(browser, response.headers["Location"], "alice")
        status, _, set_cookies = await call(tab, "GET", callback, cookie=store.header())
        assert status == 303 and sets_session(set_cookies)


@pytest.mark.parametrize("variant", ["no_cookie", "only_another_logins_cookie", "no_state", "huge_state"])
async def test_a_callback_without_its_login_cookie_is_refused(stack, variant):
    async with stack.browser() as browser, plain_client() as client:
        callback = await pending_callback(stack, browser)
        name, value = login_cookie(stack, browser)
        cookie, url = None, callback
        if variant == "only_another_logins_cookie":
            await stack.start_login(browser)
            cookie = "; ".join(f"{n}={v}" for n, v in jar_cookies(stack, browser).items()
                               if n.startswith(LOGIN_PREFIX) and n != name)
        elif variant == "no_state":
            cookie, url = f"{name}={value}", with_query(callback, state=None)
        elif variant == "huge_state":
            cookie, url = f"{name}={value}", with_query(callback, state="s" * 5000)
        answer = await call(client, "GET", url, cookie=cookie)
        await assert_refused(stack, answer, 400, "login_state_invalid")


# -- another browser's login: login CSRF, code injection, nonce --------------------------------


@pytest.mark.parametrize("victim_has_own_login", [False, True])
async def test_login_csrf_the_attackers_callback_in_the_victims_browser_is_refused(stack, victim_has_own_login):
    """The attacker logs in as themselves at the OP, stops before the callback and makes the victim's
    browser open it (a link, an image, a redirect): the victim must not end up in the attacker's session."""
    async with stack.browser() as attacker, stack.browser() as victim:
        attackers_callback = await pending_callback(stack, attacker, user="bob")
        if victim_has_own_login:
            await stack.start_login(victim)
        answer = await call(victim, "GET", attackers_callback, headers={"Sec-Fetch-Site": "cross-site"})
        await assert_refused(stack, answer, 400, "login_state_invalid")
        assert SESSION_COOKIE not in jar_cookies(stack, victim)


@pytest.mark.parametrize("source", ["another_browser", "another_login_of_this_browser"])
async def test_a_code_injected_from_another_login_is_refused(stack, source):
    """A stolen code (another browser's, or this browser's other tab's) under this login's state: the PKCE
    verifier sealed in this login's cookie is not the code's, so the OP refuses the exchange.  (This is
    also why a mismatched nonce cannot be reached through a conformant OP: the nonce is bound to the same
    code the verifier is; the nonce check is the second lock on that door.)"""
    async with stack.browser() as victim, stack.browser() as attacker:
        victims_callback = await pending_callback(stack, victim)
        thief = attacker if source == "another_browser" else victim
        stolen = query_of(await pending_callback(stack, thief, user="alice"))["code"]
        state = query_of(victims_callback)["state"]
        answer = await call(victim, "GET", with_query(victims_callback, code=stolen))
        await assert_refused(stack, answer, 401, "code_exchange_failed")
        assert login_cookie(stack, victim, state)      # not cleared, but used up: see the replay test


async def test_the_error_answer_of_the_issuer_logs_nobody_in(stack):
    async with stack.browser() as browser:
        callback = await pending_callback(stack, browser)
        answer = await call(browser, "GET", with_query(callback, code=None, error="access_denied"))
        await assert_refused(stack, answer, 401, "login_refused")


async def test_an_unknown_user_at_the_op_logs_nobody_in(stack):
    async with stack.browser() as browser:
        callback = await pending_callback(stack, browser, user="mallory")
        assert query_of(callback)["error"] == "access_denied"
        answer = await call(browser, "GET", callback)
        await assert_refused(stack, answer, 401, "login_refused")


# -- RFC 9207: the authorization response's iss --------------------------------------------------


@pytest.mark.parametrize("variant", ["missing", "another_op", "trailing_slash", "upper_case", "empty", "prefix"])
async def test_a_missing_or_wrong_iss_is_refused(stack, other_op, variant):
    """A mix-up: the browser talks to two OPs, and the answer of one is replayed as the other's."""
    async with stack.browser() as browser:
        callback = await pending_callback(stack, browser)
        iss = query_of(callback)["iss"]
        assert iss == stack.op.issuer
        wrong = {"missing": None, "another_op": other_op.issuer, "trailing_slash": iss + "/",
                 "upper_case": iss.upper(), "empty": "", "prefix": iss[:-1]}[variant]
        answer = await call(browser, "GET", with_query(callback, iss=wrong))
        await assert_refused(stack, answer, 400, "iss_mismatch")
        # Not used up: the genuine answer still completes the login.
        async with browser.get(callback, allow_redirects=False) as response:
            assert response.status == 303


# -- open redirect -------------------------------------------------------------------------------


OPEN_REDIRECTS = ["//evil.example", "/\\evil.example", "/%2F%2Fevil.example", "/%5Cevil.example",
                  "/%252F%252Fevil.example", "/\t/evil.example", "/%09/evil.example", "https://evil.example",
                  "javascript:alert(1)", "/\uff0fevil.example", "/.//evil.example", "/app/..//evil.example",
                  "/" + "a" * 5000]


async def test_rd_cannot_send_the_browser_off_this_host(stack):
    async with stack.browser() as browser:
        await stack.log_in(browser)          # the OP remembers the user: the next logins need no form
        for rd in OPEN_REDIRECTS:
            async with browser.get(stack.url + "/.idgate/login?" + urlencode({"rd": rd}), allow_redirects=False) as started:
                assert started.status == 302
                # The login cookie holds `/`, not the trick: it stays small whatever rd was.
                assert all(len(c) < 1200 for c in started.headers.getall("Set-Cookie")), rd
                callback = await login_at_op(browser, started.headers["Location"], "alice")
            async with browser.get(callback, allow_redirects=False) as response:
                assert (response.status, response.headers["Location"]) == (303, "/"), rd
        async with browser.get(stack.url + "/.idgate/login?" + urlencode({"rd": "/app/x?y=1"}),
                               allow_redirects=False) as started:
            callback = await login_at_op(browser, started.headers["Location"], "alice")
        async with browser.get(callback, allow_redirects=False) as response:
            assert response.headers["Location"] == "/app/x?y=1"      # a path on this host is kept
    assert stack.upstream.received == []


@pytest.mark.parametrize("target", ["//evil.example/app", "///evil.example/app", "/%2F%2Fevil.example", "/.//evil.example",
                                    "/app/" + "a" * 6000])
async def test_the_page_that_sent_the_browser_to_login_cannot_be_an_open_redirect(stack, target):
    async with stack.browser() as browser:
        async with browser.get(URL(stack.url + target, encoded=True), headers=NAVIGATE,
                               allow_redirects=False) as response:
            if response.status == 400:     # a path idgate refuses outright never starts a login
                assert (await response.json())["code"] == "bad_request"
                return
            assert response.status == 302
            callback = await login_at_op(browser, response.headers["Location"], "alice")
        async with browser.get(callback, allow_redirects=False) as response:
            assert (response.status, response.headers["Location"]) == (303, "/")
    assert stack.upstream.received == []


# -- session fixation and cookie tossing ----------------------------------------------------------


@pytest.mark.parametrize("planted", ["attackers_live_session", "junk"])
async def test_a_session_cookie_set_before_login_does_not_survive_login(stack, planted):
    async with stack.browser() as attacker, stack.browser() as victim:
        value = await session_of(stack, attacker, "bob") if planted == "attackers_live_session" else "v1.k1.junk"
        victim.cookie_jar.update_cookies({SESSION_COOKIE: value}, URL(stack.url))
        async with victim.get(stack.url + "/.idgate/login?rd=/app/page", allow_redirects=False) as started:
            callback = await login_at_op(victim, started.headers["Location"], "alice")
        async with victim.get(callback, allow_redirects=False) as response:
            assert response.status == 303
        assert jar_cookies(stack, victim)[SESSION_COOKIE] != value
        async with victim.get(stack.url + "/app/page", headers=NAVIGATE, allow_redirects=False) as response:
            assert response.status == 200
        assert stack.upstream.received[-1].header("X-Idgate-Subject") == ["alice"]


@pytest.mark.parametrize("tossed", ["twice_in_one_header", "in_two_cookie_headers", "live_and_junk"])
async def test_a_tossed_session_cookie_is_ambiguous_and_counts_as_none(stack, tossed):
    """A sibling host (or a script) adds a second cookie of the same name: which would an upstream or a
    framework read?  Neither counts: the request is not authenticated."""
    async with stack.browser() as alice, stack.browser() as bob, plain_client() as client:
        mine, theirs = await session_of(stack, alice), await session_of(stack, bob, "bob")
        headers = {
            "twice_in_one_header": [("Cookie", f"{SESSION_COOKIE}={mine}; {SESSION_COOKIE}={theirs}")],
            "in_two_cookie_headers": [("Cookie", f"{SESSION_COOKIE}={mine}"), ("Cookie", f"{SESSION_COOKIE}={theirs}")],
            "live_and_junk": [("Cookie", f"{SESSION_COOKIE}=junk; {SESSION_COOKIE}={mine}")],
        }[tossed]
        answer = await raw_get(stack, "/app/api", headers)
        await assert_refused(stack, answer, 401, "no_session")


async def test_a_case_variant_of_the_session_cookie_is_not_the_session_cookie(stack):
    async with stack.browser() as browser, plain_client() as client:
        mine = await session_of(stack, browser)
        for name in ("__host-idgate-session", "__HOST-IDGATE-SESSION", "__Host-Idgate-Session"):
            answer = await call(client, "GET", stack.url + "/app/api", cookie=f"{name}={mine}")
            await assert_refused(stack, answer, 401, "missing_token")


async def test_idgates_cookies_never_reach_the_upstream_in_any_spelling(stack):
    async with stack.browser() as browser, plain_client() as client:
        mine = await session_of(stack, browser)
        status, _, _ = await raw_get(stack, "/app/page", [
            ("Cookie", f"app=1; {SESSION_COOKIE}={mine}; __host-idgate-session=x; {LOGIN_PREFIX}0123456789abcdef=y"),
            ("cookie", f"__HOST-IDGATE-LOGIN-abc=z; quoted=\"a; {LOGIN_PREFIX}ffff=b\"; second=2"),
            ("COOKIE", f" {LOGIN_PREFIX}spaced = s ; third=3"),
        ])
        assert status == 200
        sent = stack.upstream.received[-1].header("Cookie")
        assert sent and not any("idgate" in value.lower() for value in sent), sent
        assert {"app=1", "second=2", "third=3"} <= {p.strip() for v in sent for p in v.split(";")}
        assert stack.upstream.received[-1].header("X-Idgate-Subject") == ["alice"]


@pytest.mark.parametrize("name", [SESSION_COOKIE, LOGIN_PREFIX + "0123456789abcdef", "__host-idgate-session",
                                  f" {SESSION_COOKIE}\t", f"={SESSION_COOKIE}"],
                         ids=["session", "login", "lower_case", "spaced", "nameless"])
async def test_the_upstream_cannot_set_or_clear_idgates_cookies(stack, name):
    """An upstream (another route's on this host, or one with a cookie-injection bug) answering with
    idgate's cookie would fix the browser's session to one it chose (login CSRF) or log the user out."""
    async with stack.browser() as attacker, stack.browser() as victim:
        planted = await session_of(stack, attacker, "bob")
        mine = await session_of(stack, victim)
        query = urlencode([("set_cookie", f"{name}={planted}; Path=/; Secure; HttpOnly; SameSite=Lax"),
                           ("set_cookie", "app_pref=dark; Path=/")])
        async with victim.get(stack.url + "/app/__set_cookie?" + query, headers=NAVIGATE,
                              allow_redirects=False) as response:
            assert response.status == 200
            set_cookies = response.headers.getall("Set-Cookie", [])
        assert not any("idgate" in value.lower() for value in set_cookies), set_cookies
        assert any(value.startswith("app_pref=dark") for value in set_cookies)   # the upstream's own still pass
        assert jar_cookies(stack, victim)[SESSION_COOKIE] == mine


# -- CSRF: logout and state-changing requests -------------------------------------------------------


CROSS_SITE = {
    "origin_other_site": {"Origin": EVIL},
    "fetch_cross_site": {"Sec-Fetch-Site": "cross-site"},
    "fetch_same_site": {"Sec-Fetch-Site": "same-site"},
    "origin_null": {"Origin": "null"},
    "no_origin": {},
    "origin_http_other_site": {"Origin": "http://evil.example"},
    "origin_with_path": {"Origin": "ORIGIN/app"},
    "fetch_cross_site_origin_same": {"Sec-Fetch-Site": "cross-site", "Origin": "ORIGIN"},
    "x_forwarded_host_evil": {"Origin": EVIL, "X-Forwarded-Host": "evil.example"},
}


def cross_site_headers(stack: LoginStack, variant: str) -> dict[str, str]:
    return {k: v.replace("ORIGIN", stack.url) for k, v in CROSS_SITE[variant].items()}


@pytest.mark.parametrize("variant", CROSS_SITE)
async def test_logout_csrf_is_refused(stack, variant):
    async with stack.browser() as browser:
        mine = await session_of(stack, browser)
        answer = await call(browser, "POST", stack.url + "/.idgate/logout", headers=cross_site_headers(stack, variant))
        await assert_refused(stack, answer, 403, "cross_site_request")
        assert not any(v.startswith(SESSION_COOKIE) for v in answer[2])      # not cleared either
        assert await sessions_alive(stack, mine)


async def test_a_logout_page_load_only_shows_the_button(stack):
    async with stack.browser() as browser:
        mine = await session_of(stack, browser)
        async with browser.get(stack.url + "/.idgate/logout", headers={"Sec-Fetch-Site": "cross-site"},
                               allow_redirects=False) as response:
            assert response.status == 200 and "<form method=\"post\">" in await response.text()
            assert not response.headers.getall("Set-Cookie", [])
        assert await sessions_alive(stack, mine)


async def test_the_logout_page_cannot_be_framed(stack):
    """Clickjacking: a page of a sibling host (same-site, so the Lax session cookie rides along) frames the
    logout button under something the user means to click; the button's POST is then same-origin."""
    async with plain_client() as client:
        async with client.get(stack.url + "/.idgate/logout") as response:
            assert response.status == 200
            assert response.headers.get("X-Frame-Options") == "DENY"
            assert "frame-ancestors 'none'" in response.headers.get("Content-Security-Policy", "")


async def test_a_cross_site_link_to_the_login_path_does_not_log_the_user_out(stack):
    """A login started by another site (a top-level link, which carries and may clear Lax cookies) must not
    end the session the browser has: that would be a logout CSRF through the login path."""
    async with stack.browser() as browser:
        mine = await session_of(stack, browser)
        async with browser.get(stack.url + "/.idgate/login?rd=/app", headers={**NAVIGATE, "Sec-Fetch-Site": "cross-site"},
                               allow_redirects=False) as response:
            assert response.status == 302
            assert not any(v.startswith(SESSION_COOKIE) for v in response.headers.getall("Set-Cookie", []))
        assert jar_cookies(stack, browser)[SESSION_COOKIE] == mine
        assert await sessions_alive(stack, mine)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "PROPFIND"])
@pytest.mark.parametrize("variant", CROSS_SITE)
async def test_a_cross_site_state_changing_request_with_the_session_cookie_is_refused(stack, method, variant):
    async with stack.browser() as browser:
        await session_of(stack, browser)
        before = len(stack.upstream.received)
        answer = await call(browser, method, stack.url + "/app/transfer", data=b"amount=100",
                            headers=cross_site_headers(stack, variant))
        record = await assert_refused(stack, answer, 403, "cross_site_request", upstream_before=before)
        assert record["identity"]["sub"] == "alice" and record["session"]


async def test_a_same_origin_post_with_the_session_cookie_goes_through(stack):
    async with stack.browser() as browser:
        await session_of(stack, browser)
        for headers in ({"Origin": stack.url}, {"Sec-Fetch-Site": "same-origin", "Origin": stack.url},
                        {"Sec-Fetch-Site": "same-origin"}):
            async with browser.post(stack.url + "/app/transfer", headers=headers, data=b"x") as response:
                assert response.status == 200
    assert len(stack.upstream.received) == 3


async def test_a_cross_site_post_navigation_is_refused_not_sent_to_login(stack):
    async with stack.browser() as browser, stack.browser() as fresh:
        await session_of(stack, browser)
        navigate = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Site": "cross-site", "Accept": "text/html", "Origin": EVIL}
        answer = await call(browser, "POST", stack.url + "/app/transfer", data=b"x", headers=navigate)
        await assert_refused(stack, answer, 403, "cross_site_request")
        # Without a session, a POST is never a page load to send to login: 401, and no login cookie.
        status, _, set_cookies = await call(fresh, "POST", stack.url + "/app/transfer", data=b"x", headers=navigate)
        assert status == 401 and not any(v.startswith(LOGIN_PREFIX) for v in set_cookies)


@pytest.mark.parametrize("origin", ["EVIL", "null", "SAME_SITE_SIBLING", None])
async def test_cross_site_websocket_hijacking_is_refused(oidc_provider, tmp_path, origin):
    """A WebSocket handshake is a GET, but it opens a two-way channel the other site can read and write
    (no CORS applies): with only the session cookie, it must come from this origin, as unsafe methods do."""
    async with login_stack(oidc_provider, tmp_path, route={"websocket": True}) as stack:
        async with stack.browser() as browser, plain_client() as client:
            mine = await session_of(stack, browser)
            headers = {"Cookie": f"{SESSION_COOKIE}={mine}"}
            if origin == "SAME_SITE_SIBLING":
                headers |= {"Origin": "https://sibling.127.0.0.1.nip.io", "Sec-Fetch-Site": "same-site"}
            elif origin is not None:
                headers["Origin"] = EVIL if origin == "EVIL" else origin
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                async with client.ws_connect(stack.url.replace("http", "ws") + "/app/ws", headers=headers):
                    pass
            assert refused.value.status == 403
            assert stack.upstream.received == [] or all(r.raw_path != "/app/ws" for r in stack.upstream.received)
            record = await last_denial(stack)
            assert record["reasons"] == ["cross_site_request"] and record["identity"]["sub"] == "alice"
            # From this origin, the same handshake is relayed.
            async with client.ws_connect(stack.url.replace("http", "ws") + "/app/ws",
                                         headers={"Cookie": f"{SESSION_COOKIE}={mine}", "Origin": stack.url}) as ws:
                await ws.send_str("hi")
                assert (await ws.receive_str()) == "echo:hi"


# -- what else a browser (or a script in it) may send --------------------------------------------


async def test_identity_headers_a_browser_sends_never_reach_the_upstream(stack):
    async with stack.browser() as browser:
        await session_of(stack, browser)
        forged = {"X-Idgate-Subject": "mallory", "X-Forwarded-User": "admin", "X-Auth-Request-Email": "a@evil",
                  "Remote-User": "admin", "X-Idgate-Groups": "admins"}
        async with browser.get(stack.url + "/app/page", headers={**NAVIGATE, **forged}) as response:
            assert response.status == 200
        status, _, _ = await raw_get(stack, "/app/page", [
            ("Cookie", f"{SESSION_COOKIE}={jar_cookies(stack, browser)[SESSION_COOKIE]}"), ("X_Idgate_Subject", "mallory")])
        assert status == 200
    for seen in stack.upstream.received[-2:]:
        assert seen.header("X-Idgate-Subject") == ["alice"]
        assert seen.header("X-Forwarded-User") == seen.header("X-Auth-Request-Email") == seen.header("Remote-User") == []
        assert not any(n.lower().replace("_", "-") == "x-idgate-subject" and v == "mallory" for n, v in seen.headers)
        assert "admins" not in seen.header("X-Idgate-Groups")[0]


async def test_a_bearer_token_wins_over_the_session_cookie_and_the_cookie_stays_home(stack):
    """A bearer token is not ambient (the browser does not add it): it decides, the CSRF rule of the cookie
    does not apply, and a bad one is a 401 with no fall back to the cookie."""
    async with stack.browser() as browser:
        mine = await session_of(stack, browser)
        token = stack.op.token("svc-etl-7", "https://orders.internal")
        async with browser.post(stack.url + "/app/transfer", headers={"Authorization": f"Bearer {token}", "Origin": EVIL},
                                data=b"x", allow_redirects=False) as response:
            assert response.status == 200
        seen = stack.upstream.received[-1]
        assert seen.header("X-Idgate-Subject") == ["svc-etl-7"]
        assert not any("idgate" in v for v in seen.header("Cookie")) and seen.header("Authorization") == []
        answer = await call(browser, "GET", stack.url + "/app/page", headers={**NAVIGATE, "Authorization": "Bearer e30.e30.x"})
        await assert_refused(stack, answer, 401, "malformed_token", upstream_before=1)
        assert await sessions_alive(stack, mine)


async def test_a_forged_host_cannot_choose_where_the_code_goes(stack):
    async with plain_client() as client:
        for headers in ({"Host": "evil.example"}, {"Host": "evil.example", "X-Forwarded-Host": URL(stack.url).raw_authority}):
            answer = await call(client, "GET", stack.url + "/.idgate/login?rd=/app", headers=headers)
            await assert_refused(stack, answer, 401, "login_unavailable")
        # X-Forwarded-Host from a peer that is not a trusted proxy changes nothing: the registered URI.
        async with client.get(stack.url + "/.idgate/login?rd=/app", headers={"X-Forwarded-Host": "evil.example"},
                              allow_redirects=False) as response:
            assert response.status == 302
            assert query_of(response.headers["Location"])["redirect_uri"] == stack.client.redirect_uris[0]


async def test_head_is_a_page_load_like_get_and_changes_nothing_cross_site(stack):
    async with stack.browser() as browser, stack.browser() as fresh:
        async with fresh.head(stack.url + "/app/page", headers=NAVIGATE, allow_redirects=False) as response:
            assert response.status == 302 and response.headers["Location"].startswith(stack.op.issuer)
        mine = await session_of(stack, browser)
        async with browser.head(stack.url + "/app/page", headers={**NAVIGATE, "Sec-Fetch-Site": "cross-site"},
                                allow_redirects=False) as response:
            assert response.status == 200
        async with plain_client() as client:
            answer = await call(client, "HEAD", stack.url + "/app/api", cookie=f"{SESSION_COOKIE}=junk")
            assert answer[0] == 401
        assert await sessions_alive(stack, mine)


# -- sessions that have ended ------------------------------------------------------------------------


async def test_a_session_cookie_replayed_after_logout_is_refused(stack):
    async with stack.browser() as browser, plain_client() as thief:
        mine = await session_of(stack, browser)
        async with browser.post(stack.url + "/.idgate/logout", headers={"Origin": stack.url}, allow_redirects=False) as response:
            assert response.status == 303
        answer = await call(thief, "GET", stack.url + "/app/api", cookie=f"{SESSION_COOKIE}={mine}")
        await assert_refused(stack, answer, 401, "no_session")


async def test_a_session_cookie_replayed_after_back_channel_logout_is_refused(stack):
    async with stack.browser() as browser, plain_client() as thief:
        mine = await session_of(stack, browser)
        # The user logs out at the OP itself (not through idgate): the OP tells idgate on the back channel.
        end_session = stack.op.discovery()["end_session_endpoint"] + "?" + urlencode({
            "client_id": stack.client.client_id, "post_logout_redirect_uri": stack.url + "/"})
        await end_session_at_op(browser, end_session)
        assert not any(r["action"] == "logout" for r in await stack.records("session"))
        backchannel = [r for r in await stack.records("session") if r["action"] == "backchannel_logout"]
        assert backchannel and backchannel[-1]["logout"]["sid"]
        answer = await call(thief, "GET", stack.url + "/app/api", cookie=f"{SESSION_COOKIE}={mine}")
        await assert_refused(stack, answer, 401, "no_session")


async def test_a_session_cookie_replayed_after_back_channel_logout_alone_is_refused(stack):
    """The session ends at the OP without an RP-initiated logout here (the back channel is all idgate hears)."""
    async with stack.browser() as browser, plain_client() as thief:
        mine = await session_of(stack, browser)
        token = logout_token(stack, sub="alice")
        async with thief.post(stack.url + "/.idgate/backchannel-logout", data={"logout_token": token}) as response:
            assert response.status == 200
        answer = await call(thief, "GET", stack.url + "/app/api", cookie=f"{SESSION_COOKIE}={mine}")
        await assert_refused(stack, answer, 401, "no_session")


async def test_a_session_cookie_replayed_after_the_idle_timeout_is_refused(oidc_provider, tmp_path):
    async with login_stack(oidc_provider, tmp_path, idle_timeout=1) as stack:
        async with stack.browser() as browser, plain_client() as thief:
            mine = await session_of(stack, browser)
            await elapse(1.3)
            answer = await call(thief, "GET", stack.url + "/app/api", cookie=f"{SESSION_COOKIE}={mine}")
            await assert_refused(stack, answer, 401, "session_expired")
            assert [r["action"] for r in await stack.records("session")][-1] == "expired"
            answer = await call(thief, "GET", stack.url + "/app/api", cookie=f"{SESSION_COOKIE}={mine}")
            await assert_refused(stack, answer, 401, "no_session")


async def test_a_session_cookie_replayed_after_the_session_lifetime_is_refused(oidc_provider, tmp_path):
    # Long enough that the check just after login is inside the lifetime on a loaded machine.
    async with login_stack(oidc_provider, tmp_path, session_lifetime=5, idle_timeout=5) as stack:
        async with stack.browser() as browser, plain_client() as thief:
            mine = await session_of(stack, browser)
            assert await sessions_alive(stack, mine)
            await elapse(5.2)
            answer = await call(thief, "GET", stack.url + "/app/api", cookie=f"{SESSION_COOKIE}={mine}")
            await assert_refused(stack, answer, 401, "no_session", upstream_before=1)


async def test_a_refresh_the_issuer_refuses_ends_the_session(oidc_provider, tmp_path):
    """The refresh token is no longer good at the OP (here: expired; revoked is the same answer,
    invalid_grant): the session ends at once, not when the ID token's claims run out."""
    with oidc_provider.short_ttls(IdToken=30, RefreshToken=1):
        async with login_stack(oidc_provider, tmp_path, refresh_margin=60) as stack:
            async with stack.browser() as browser, plain_client() as thief:
                mine = await session_of(stack, browser)
                await elapse(1.5)
                answer = await call(thief, "GET", stack.url + "/app/api", cookie=f"{SESSION_COOKIE}={mine}")
                await assert_refused(stack, answer, 401, "session_revoked")
                assert [r["action"] for r in await stack.records("session")][-1] == "revoked"
                answer = await call(thief, "GET", stack.url + "/app/api", cookie=f"{SESSION_COOKIE}={mine}")
                await assert_refused(stack, answer, 401, "no_session")


# -- back-channel logout -------------------------------------------------------------------------------


def logout_claims(stack: LoginStack, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"iss": stack.op.issuer, "aud": stack.client.client_id, "iat": now, "exp": now + 120,
                              "jti": secrets.token_urlsafe(12), "events": {BACKCHANNEL_EVENT: {}}}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def logout_token(stack: LoginStack, op: OidcProvider | None = None, header: dict[str, Any] | None = None,
                 **changes: Any) -> str:
    return (op or stack.op).sign(logout_claims(stack, **changes), **({"typ": "logout+jwt"} | (header or {})))


LOGOUT_TOKEN_ATTACKS = {
    "another_client": lambda stack, other: logout_token(stack, sub="alice", aud="some-other-client"),
    "an_id_token": lambda stack, other: stack.op.sign(logout_claims(stack, sub="alice", events=None, nonce="n",
                                                                    auth_time=int(time.time()))),
    "an_id_token_with_the_event": lambda stack, other: logout_token(stack, sub="alice", nonce="n"),
    "no_events": lambda stack, other: logout_token(stack, sub="alice", events=None),
    "another_event": lambda stack, other: logout_token(stack, sub="alice", events={"urn:other:event": {}}),
    "event_not_an_object": lambda stack, other: logout_token(stack, sub="alice", events={BACKCHANNEL_EVENT: "yes"}),
    "with_a_nonce": lambda stack, other: logout_token(stack, sub="alice", nonce="abc"),
    "neither_sid_nor_sub": lambda stack, other: logout_token(stack),
    "sid_not_a_string": lambda stack, other: logout_token(stack, sid=7, sub="alice"),
    "no_jti": lambda stack, other: logout_token(stack, sub="alice", jti=None),
    "expired": lambda stack, other: logout_token(stack, sub="alice", iat=int(time.time()) - 600,
                                                 exp=int(time.time()) - 300),
    "access_token_type": lambda stack, other: logout_token(stack, header={"typ": "at+jwt"}, sub="alice"),
    "another_issuer": lambda stack, other: logout_token(stack, other, sub="alice", iss=other.issuer),
    "another_issuers_key": lambda stack, other: logout_token(stack, other, sub="alice"),
    "bad_signature": lambda stack, other: logout_token(stack, sub="alice")[:-4] + "AAAA",
    "alg_none": lambda stack, other: ".".join(logout_token(stack, header={"alg": "none"}, sub="alice").split(".")[:2]) + ".",
}


@pytest.mark.parametrize("attack", LOGOUT_TOKEN_ATTACKS)
async def test_a_logout_token_that_fails_a_check_ends_nothing(stack, other_op, attack):
    async with stack.browser() as browser, plain_client() as issuer:
        mine = await session_of(stack, browser)
        token = LOGOUT_TOKEN_ATTACKS[attack](stack, other_op)
        answer = await call(issuer, "POST", stack.url + "/.idgate/backchannel-logout", data={"logout_token": token})
        await assert_refused(stack, answer, 400, "logout_token_invalid", upstream_before=0)
        assert await sessions_alive(stack, mine)
        assert not any(r["action"] == "backchannel_logout" for r in await stack.records("session"))


async def test_a_replayed_logout_token_is_refused(stack):
    """A logout token seen once (a log, a proxy on the way) must not end the sessions of a later login."""
    async with stack.browser() as browser, plain_client() as issuer:
        await session_of(stack, browser)
        token = logout_token(stack, sub="alice")
        status, _, _ = await call(issuer, "POST", stack.url + "/.idgate/backchannel-logout", data={"logout_token": token})
        assert status == 200
        mine = await session_of(stack, browser)           # the user logs in again
        answer = await call(issuer, "POST", stack.url + "/.idgate/backchannel-logout", data={"logout_token": token})
        await assert_refused(stack, answer, 400, "logout_token_invalid")
        assert await sessions_alive(stack, mine)


async def test_another_issuers_logout_token_ends_nothing_of_this_one(stack, other_op):
    """Even an issuer idgate trusts ends only its own sessions: the other OP (a second real process)
    registered like this one, naming the same subject."""
    async with stack.browser() as browser, plain_client() as issuer:
        mine = await session_of(stack, browser)
        token = other_op.sign({**logout_claims(stack, sub="alice"), "iss": other_op.issuer}, typ="logout+jwt")
        answer = await call(issuer, "POST", stack.url + "/.idgate/backchannel-logout", data={"logout_token": token})
        await assert_refused(stack, answer, 400, "logout_token_invalid")
        assert await sessions_alive(stack, mine)


BAD_FORMS = {
    "two_logout_tokens": lambda token: ("application/x-www-form-urlencoded", f"logout_token={token}&logout_token={token}"),
    "no_logout_token": lambda token: ("application/x-www-form-urlencoded", f"token={token}"),
    "many_fields": lambda token: ("application/x-www-form-urlencoded", f"logout_token={token}" + "&a=1" * 10),
    "json": lambda token: ("application/json", json.dumps({"logout_token": token})),
    "text": lambda token: ("text/plain", f"logout_token={token}"),
    "multipart": lambda token: ("multipart/form-data; boundary=x",
                                f"--x\r\nContent-Disposition: form-data; name=\"logout_token\"\r\n\r\n{token}\r\n--x--\r\n"),
    "oversized": lambda token: ("application/x-www-form-urlencoded", f"logout_token={token}&pad=" + "x" * 20000),
    "not_utf8": lambda token: ("application/x-www-form-urlencoded", "logout_token=\udcff"),
}


@pytest.mark.parametrize("form", BAD_FORMS)
async def test_a_malformed_back_channel_request_ends_nothing(stack, form):
    async with stack.browser() as browser, plain_client() as issuer:
        mine = await session_of(stack, browser)
        content_type, body = BAD_FORMS[form](logout_token(stack, sub="alice"))
        answer = await call(issuer, "POST", stack.url + "/.idgate/backchannel-logout",
                            data=body.encode("utf-8", "surrogateescape"), headers={"Content-Type": content_type})
        await assert_refused(stack, answer, 400, "logout_token_invalid")
        assert await sessions_alive(stack, mine)


async def test_the_back_channel_takes_only_posts(stack):
    async with plain_client() as client:
        answer = await call(client, "GET", stack.url + "/.idgate/backchannel-logout?logout_token=x")
        await assert_refused(stack, answer, 400, "method_not_allowed")


async def test_the_audit_never_holds_a_code_a_state_a_cookie_or_a_token(stack):
    """Whatever the attacks above put in front of idgate, the audit says which session (a hash) and why,
    never the secrets themselves: not the code or state of a callback, not a cookie, not a logout token."""
    secrets_seen: list[str] = []
    async with stack.browser() as browser, plain_client() as client:
        callback = await pending_callback(stack, browser)
        name, value = login_cookie(stack, browser)
        secrets_seen += [query_of(callback)["code"], query_of(callback)["state"], value]
        await call(client, "GET", with_query(callback, iss="https://evil.example"), cookie=f"{name}={value}")
        await call(client, "GET", callback, cookie=f"{name}={value[:-2]}xx")
        async with browser.get(callback, allow_redirects=False) as response:
            assert response.status == 303
        await call(client, "GET", callback, cookie=f"{name}={value}")             # replayed
        mine = jar_cookies(stack, browser)[SESSION_COOKIE]
        secrets_seen.append(mine)
        await call(client, "POST", stack.url + "/app/x", cookie=f"{SESSION_COOKIE}={mine}", headers={"Origin": EVIL})
        token = logout_token(stack, sub="alice", nonce="n")
        secrets_seen.append(token)
        await call(client, "POST", stack.url + "/.idgate/backchannel-logout", data={"logout_token": token})
    await stack.idgate.settled()
    audit = stack.idgate.services.config.audit.path.read_text()
    assert len(audit.splitlines()) >= 6
    for secret in secrets_seen:
        assert secret not in audit and secret[:24] not in audit
