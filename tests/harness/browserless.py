"""Plays the user's browser at the real OpenID Provider (tests/harness/oidc_provider.py) with no browser: a cookie
jar, every redirect seen one hop at a time, the OP's login and logout forms read and submitted."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import aiohttp

REDIRECTS = frozenset({301, 302, 303, 307, 308})
# An authorization is a handful of hops (authorize, interaction, login, resume, consent, resume): more is a loop.
MAX_HOPS = 12


class BrowserlessError(AssertionError):
    """The OP answered what a browser could not go on from (an error page, no form, too many hops)."""


def browser_session(secure_origins: Iterable[str] = ()) -> aiohttp.ClientSession:
    """A session whose cookie jar behaves like a browser's on loopback: it keeps cookies of IP hosts
    (unsafe=True) and sends Secure ones (a __Host- cookie) to `secure_origins` over plain http, as browsers
    do for http://127.0.0.1.  Cookies are per host, not per port, as in a browser: the OP's (_session,
    _interaction, ...) and a relying party's on 127.0.0.1 share the jar.  The caller closes it."""
    jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=list(secure_origins))
    return aiohttp.ClientSession(cookie_jar=jar, trust_env=False)


@dataclass(frozen=True, slots=True)
class Form:
    action: str                # absolute
    method: str                # upper case
    fields: dict[str, str]     # the named inputs and their values


class _FormParser(HTMLParser):
    """The page's first form: its attributes and the inputs inside it that carry a name."""

    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, str] | None = None
        self.fields: dict[str, str] = {}
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form" and self.attrs is None:
            self.attrs, self._inside = values, True
        elif tag == "input" and self._inside and values.get("name"):
            self.fields[values["name"]] = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._inside = False


class _TextParser(HTMLParser):
    """The text a reader of the page sees (the OP's error pages put the error in <pre>), styles left out."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._hidden += tag in ("style", "script")

    def handle_endtag(self, tag: str) -> None:
        self._hidden -= tag in ("style", "script")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def page_text(page: str, limit: int = 500) -> str:
    parser = _TextParser()
    parser.feed(page)
    return " ".join(" ".join(parser.parts).split())[:limit]


def first_form(page: str, page_url: str) -> Form | None:
    parser = _FormParser()
    parser.feed(page)
    if parser.attrs is None:
        return None
    return Form(action=urljoin(page_url, parser.attrs.get("action") or page_url),
                method=(parser.attrs.get("method") or "get").upper(), fields=parser.fields)


def origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


async def _hop(session: aiohttp.ClientSession, method: str, url: str,
               form: dict[str, str] | None = None) -> tuple[str | None, str]:
    """One request, redirects not followed: (the absolute Location of a redirect or None, the body)."""
    async with session.request(method, url, data=form, allow_redirects=False) as response:
        body = await response.text()
        if response.status in REDIRECTS:
            return urljoin(url, response.headers["Location"]), body
        if response.status != 200:
            raise BrowserlessError(f"{method} {url}: HTTP {response.status}: {page_text(body)}")
        return None, body


async def login_at_op(session: aiohttp.ClientSession, authorize_url: str, username: str) -> str:
    """Follows the OP's redirects from `authorize_url`, submits its login form as `username` when it shows one
    (with an OP session already in the jar it does not), and returns the first URL off the OP's origin
    (the client's redirect_uri with code, state and iss, or error=access_denied for an unknown user) without
    requesting it."""
    op = origin(authorize_url)
    method, url, data = "GET", authorize_url, None
    for _ in range(MAX_HOPS):
        location, page = await _hop(session, method, url, data)
        if location is not None:
            if origin(location) != op:
                return location
            method, url, data = "GET", location, None
            continue
        form = first_form(page, url)
        if form is None or "username" not in form.fields:
            raise BrowserlessError(f"GET {url}: a page with no login form: {page_text(page)}")
        method, url, data = form.method, form.action, {**form.fields, "username": username}
    raise BrowserlessError(f"no redirect off {authorize_url}'s origin within {MAX_HOPS} hops")


async def end_session_at_op(session: aiohttp.ClientSession, end_session_url: str) -> str:
    """Opens the OP's RP-initiated logout (`end_session_url`, with id_token_hint or client_id and
    post_logout_redirect_uri as the RP built it), confirms the sign-out (the form's xsrf field, logout=yes)
    and returns where the OP redirects next (post_logout_redirect_uri with state, or the OP's own success
    page) without requesting it.  The OP has made its back-channel logout calls by the time it redirects."""
    location, page = await _hop(session, "GET", end_session_url)
    if location is not None:
        raise BrowserlessError(f"GET {end_session_url}: redirected to {location} instead of asking to sign out")
    form = first_form(page, end_session_url)
    if form is None or "xsrf" not in form.fields:
        raise BrowserlessError(f"GET {end_session_url}: a page with no logout form: {page_text(page)}")
    location, page = await _hop(session, form.method, form.action, {**form.fields, "logout": "yes"})
    if location is None:
        raise BrowserlessError(f"{form.method} {form.action}: no redirect after signing out: {page_text(page)}")
    return location
