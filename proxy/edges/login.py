"""Browser login surface: start a login, the issuer's callback (a new session), logout (POST from this
origin only; then the issuer's logout), and the issuer's back-channel logout.  Every step is audited."""

from __future__ import annotations

from urllib.parse import parse_qs

from aiohttp import web

from proxy.core.errors import AccessDenied, BadRequest, IdgateError
from proxy.core.model import AccessRequest, Surface
from proxy.core.reasons import Reason
from proxy.core.paths import normalize_path, split_target
from proxy.edges._admission import Gate, admit, is_cross_site
from proxy.edges._http import received
from proxy.edges._login import clear_cookie, login_redirect, request_cookies, set_cookie
from proxy.edges._routes import ROUTES
from proxy.services import SERVICES, Services
from proxy.sessions import Sessions
from proxy.sessions.manager import login_cookie_name

SURFACE = Surface.LOGIN
GATE = Gate(SURFACE, methods=frozenset({"GET", "HEAD", "POST"}))
MAX_FORM_BYTES = 16 * 1024          # a logout token is a few KiB
_NO_STORE = {"Cache-Control": "no-store"}
# The logout page is idgate's own: nothing loads into it and no page may frame it (the button's POST is
# same-origin even inside a frame: clickjacking by a sibling host, whose frames carry the Lax session cookie).
# No form-action: browsers apply it to the redirect after the POST too, which goes to the issuer's logout.
_PAGE_HEADERS = {**_NO_STORE, "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
                 "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff"}
_LOGOUT_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Log out</title></head>
<body><form method="post"><button type="submit">Log out</button></form></body></html>
"""


def _sessions(services: Services) -> Sessions:
    assert services.sessions is not None, "the login surface is mounted only with a login: section"
    return services.sessions


async def handle(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    admitted = await admit(services, GATE, received(request))
    login = _sessions(services).config
    access, method = admitted.access, request.method
    if access.path == login.login_path and method in ("GET", "HEAD"):
        return await _start(request, services, access)
    if access.path == login.callback_path and method in ("GET", "HEAD"):
        return await _callback(request, services, access)
    if access.path == login.logout_path and method in ("GET", "HEAD"):
        # Logging out changes state, so it is a POST; a page load gets the button that posts it.
        return web.Response(text=_LOGOUT_PAGE, content_type="text/html", headers=_PAGE_HEADERS)
    if access.path == login.logout_path:
        return await _logout(request, services, access)
    if access.path == login.backchannel_logout_path and method == "POST":
        return await _backchannel_logout(request, services, access)
    raise BadRequest(f"{method} is not accepted here", reason=Reason.METHOD_NOT_ALLOWED)


async def _start(request: web.Request, services: Services, access: AccessRequest) -> web.StreamResponse:
    """GET login_path?rd=/where: log in, then come back to `rd` (a path on this host, else `/`)."""
    return_to = request.query.get("rd", "/")
    route = None
    try:
        route = request.app[ROUTES].match(access.host, normalize_path(split_target(return_to)[0]))
    except IdgateError:
        pass       # a return path that matches no route (or no path at all) still logs in, then lands on `/`
    return await login_redirect(_sessions(services), request, route, return_to, stale_session=False)


async def _callback(request: web.Request, services: Services, access: AccessRequest) -> web.StreamResponse:
    sessions = _sessions(services)
    state = request.query.get("state", "")
    cookies = request_cookies(request, [login_cookie_name(state)]) if state else {}
    finished = await sessions.finish_login(dict(request.query), cookies, request.headers.get("Host", ""))
    # A session this browser held before (another user's, or its own older one) ends with the new login.
    previous = request_cookies(request, [sessions.config.session_cookie]).get(sessions.config.session_cookie)
    replaced = await sessions.discard(previous) if previous is not None else None
    if replaced is not None:
        await services.pipeline.record_session(access, "replaced", sessions.identity_of(replaced), replaced.key)
    # Durable before the browser holds the cookie: no session exists that the audit does not know of.
    await services.pipeline.record_session(access, "login", finished.session.identity, finished.session.key)
    response = web.Response(status=303, headers={"Location": finished.return_path, **_NO_STORE})
    clear_cookie(response, finished.login_cookie)
    set_cookie(response, sessions.config.session_cookie, finished.cookie_value, finished.max_age)
    return response


async def _logout(request: web.Request, services: Services, access: AccessRequest) -> web.StreamResponse:
    sessions = _sessions(services)
    if is_cross_site(request.headers.items(), request.headers.get("Host", "")):
        # Another site must not be able to log a user out (logout CSRF).
        raise AccessDenied("logout must come from this site", reason=Reason.CROSS_SITE_REQUEST)
    cookie = request_cookies(request, [sessions.config.session_cookie]).get(sessions.config.session_cookie, "")
    ended, issuer_logout = await sessions.end(cookie)
    if ended is not None:
        await services.pipeline.record_session(access, "logout", sessions.identity_of(ended), ended.key)
    response = web.Response(status=303, headers={"Location": issuer_logout or "/", **_NO_STORE})
    clear_cookie(response, sessions.config.session_cookie)
    return response


async def _backchannel_logout(request: web.Request, services: Services, access: AccessRequest) -> web.StreamResponse:
    """OpenID Connect Back-Channel Logout 1.0: the issuer POSTs `logout_token`; 200 once the sessions it
    names have ended here (and so on every replica sharing the store), 400 for a token that fails a check."""
    sessions = _sessions(services)
    if request.content_type != "application/x-www-form-urlencoded" or (request.content_length or 0) > MAX_FORM_BYTES:
        raise BadRequest("a logout token is posted as a form", reason=Reason.LOGOUT_TOKEN_INVALID)
    body = await request.content.read(MAX_FORM_BYTES + 1)
    if len(body) > MAX_FORM_BYTES:
        raise BadRequest("the logout request is too large", reason=Reason.LOGOUT_TOKEN_INVALID)
    try:
        tokens = parse_qs(body.decode("ascii", "replace"), max_num_fields=4).get("logout_token", [])
    except ValueError as exc:     # more fields than a logout request has (parse_qs's own bound)
        raise BadRequest("the logout request has too many fields", reason=Reason.LOGOUT_TOKEN_INVALID) from exc
    if len(tokens) != 1:
        raise BadRequest("exactly one logout_token is required", reason=Reason.LOGOUT_TOKEN_INVALID)
    logout = await sessions.verify_logout_token(tokens[0])
    ended = await sessions.end_matching(logout)
    await services.pipeline.record_session(access, "backchannel_logout", None, None, logout={
        "iss": logout.issuer, "sid": logout.idp_session, "sub": logout.subject, "sessions_ended": ended})
    return web.Response(status=200, headers=_NO_STORE)


