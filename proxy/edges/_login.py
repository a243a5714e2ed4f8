"""What the reverse proxy and the login surface share about browsers: whether a request is a page load
(sent to login) or an API call (answered 401), the redirect that starts a login, and idgate's cookies
(`__Host-`, Secure, HttpOnly, SameSite=Lax) set and cleared."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from aiohttp import web

from proxy.config import RouteConfig
from proxy.core.errors import AuthenticationError
from proxy.core.headers import cookie_pairs, cookie_values
from proxy.core.reasons import Reason
from proxy.sessions import Sessions
from proxy.sessions.return_path import safe_return_path



def is_navigation(request: web.BaseRequest) -> bool:
    """A top-level page load: Sec-Fetch-Mode says so, or (older browsers) a GET that prefers HTML and is
    not marked as XHR.  Anything else (fetch, XHR, an API client) gets a 401 it can act on."""
    if request.method not in ("GET", "HEAD") or request.headers.get("X-Requested-With", "").lower() == "xmlhttprequest":
        return False
    mode = request.headers.get("Sec-Fetch-Mode")
    if mode is not None:
        # A frame's load is a navigation too, but no login belongs in a frame (the issuer refuses to be
        # framed, and another site's page could stack frames to pile login cookies on the browser).
        return mode.lower() == "navigate" and request.headers.get("Sec-Fetch-Dest", "document").lower() == "document"
    return "text/html" in request.headers.get("Accept", "").lower()


def login_issuer(sessions: Sessions, route: RouteConfig | None) -> str:
    if route is not None and route.login_issuer is not None:
        return route.login_issuer
    if len(sessions.clients) == 1:
        return next(iter(sessions.clients))
    raise AuthenticationError("this route has no login", reason=Reason.LOGIN_UNAVAILABLE)


def redirect_uri_for(sessions: Sessions, issuer: str, host_header: str) -> str:
    """The client's registered redirect URI for the host the browser asked (never one built from the Host
    header: the issuer would refuse it, and a forged Host must not choose where a code goes)."""
    wanted = host_header.lower()
    for uri in sessions.clients[issuer].config.redirect_uris:
        if urlsplit(uri).netloc.lower() == wanted:
            return uri
    raise AuthenticationError("login is not configured for this host", reason=Reason.LOGIN_UNAVAILABLE)


async def login_redirect(sessions: Sessions, request: web.BaseRequest, route: RouteConfig | None,
                         return_to: str, *, stale_session: bool) -> web.Response:
    """302 to the issuer's login, with this login's sealed state cookie; the session cookie is cleared
    only when the caller found it `stale_session` (it did not authenticate).  The login path itself
    must not clear it: a link from any site starts a login there, and would log the user out."""
    issuer = login_issuer(sessions, route)
    redirect_uri = redirect_uri_for(sessions, issuer, request.headers.get("Host", ""))
    started = await sessions.start_login(issuer, redirect_uri, safe_return_path(return_to))
    response = web.Response(status=302, headers={"Location": started.location, "Cache-Control": "no-store"})
    set_cookie(response, started.cookie_name, started.cookie_value, started.max_age)
    held = [pair for name, value in request.headers.items() if name.lower() == "cookie" for pair in cookie_pairs(value)]
    for name in sessions.logins_to_forget(held):
        clear_cookie(response, name)
    if stale_session and cookie_values(request.headers.items(), sessions.config.session_cookie):
        clear_cookie(response, sessions.config.session_cookie)
    return response


def set_cookie(response: web.StreamResponse, name: str, value: str, max_age: int) -> None:
    # __Host-: Secure, Path=/, no Domain, so no other host (a subdomain included) can set or shadow it.
    response.set_cookie(name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="Lax")


def clear_cookie(response: web.StreamResponse, name: str) -> None:
    response.set_cookie(name, "", max_age=0, expires="Thu, 01 Jan 1970 00:00:00 GMT", path="/", secure=True,
                        httponly=True, samesite="Lax")


def request_cookies(request: web.BaseRequest, names: Sequence[str]) -> dict[str, str]:
    """The named cookies sent exactly once (a cookie sent twice is ambiguous: it counts as absent)."""
    found = {}
    for name in names:
        values = cookie_values(request.headers.items(), name)
        if len(values) == 1:
            found[name] = values[0]
    return found
