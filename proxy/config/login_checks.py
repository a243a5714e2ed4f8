"""Checks of browser login's config (issuers' `client:`, the `login:` section, routes with `login: true`):
what an issuer would accept but leaves a login open to attack or never able to finish, at its line."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from proxy.config.checks import check_positive, http_url_problem, path_prefix_problem
from proxy.config.decoder import Spot
from proxy.config.schema import ENV_SESSION_KEYS, Config, LoginConfig, OidcClientConfig, SessionStoreConfig
from proxy.core.hosts import is_loopback

AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")
STORE_TYPES = ("embedded", "dynamodb")
MAX_LOGIN_TIMEOUT = 600.0             # the bound on how long a login state may live
_COOKIE_NAME = re.compile(r"__Host-[A-Za-z0-9!#$&'*+\-.^_`|~]{1,64}")   # an RFC 6265 token with the prefix
_DYNAMODB_TABLE = re.compile(r"[A-Za-z0-9_.-]{3,255}")


def _url_problem(url: str) -> str | None:
    """Why a redirect URI or post-logout URI is not one a browser may be sent to safely."""
    if why := http_url_problem(url, bare=False):
        return why
    parts = urlsplit(url)
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return "must have no query or fragment"
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        return "must be https:// (http:// only on a loopback address): the session cookie is Secure"
    return None


def check_client(client: OidcClientConfig, spot: Spot) -> OidcClientConfig:
    if not client.id or not client.id.isprintable():
        spot.report("must be a non-empty printable string", "id")
    if not client.redirect_uris:
        spot.report("must list at least one redirect URI (one per host that serves a login route)", "redirect_uris")
    hosts: set[str] = set()
    for i, uri in enumerate(client.redirect_uris):
        if why := _url_problem(uri):
            spot.report(why, "redirect_uris", i)
            continue
        authority = urlsplit(uri).netloc.lower()
        if authority in hosts:
            spot.report(f"a second redirect URI for {authority}: one per host", "redirect_uris", i)
        hosts.add(authority)
    if client.post_logout_redirect_uri is not None and (why := _url_problem(client.post_logout_redirect_uri)):
        spot.report(why, "post_logout_redirect_uri")
    if client.auth_method not in AUTH_METHODS:
        spot.report(f"must be one of {', '.join(AUTH_METHODS)}", "auth_method")
    elif client.auth_method == "none" and client.secret_file is not None:
        spot.report("a public client (auth_method: none) has no secret", "secret_file")
    elif client.auth_method != "none" and client.secret_file is None:
        spot.report(f"{client.auth_method} needs the client secret: secret_file (or auth_method: none for a "
                    "public client)", "auth_method")
    spot.report_unreadable(client.secret_file, "secret_file")
    if "openid" not in client.scopes:
        spot.report("must include openid: login needs an ID token", "scopes")
    for i, scope in enumerate(client.scopes):
        if not scope or not all(0x21 <= ord(c) <= 0x7E and c not in '"\\' for c in scope):
            spot.report("a scope is printable ASCII without spaces, quotes or backslashes", "scopes", i)
    return client


def check_store(store: SessionStoreConfig, spot: Spot) -> SessionStoreConfig:
    if store.type not in STORE_TYPES:
        spot.report(f"must be one of {', '.join(STORE_TYPES)}", "type")
    elif store.type == "dynamodb":
        if store.table is None:
            spot.report("the dynamodb store needs its table", "type")
        elif not _DYNAMODB_TABLE.fullmatch(store.table):
            spot.report("is not a DynamoDB table name (3-255 of A-Z a-z 0-9 _ . -)", "table")
        if store.path is not None:
            spot.report("only for the embedded store", "path")
        if store.endpoint is not None and (why := http_url_problem(store.endpoint, bare=True)):
            spot.report(why, "endpoint")
    else:
        for name in ("table", "region", "endpoint"):
            if getattr(store, name) is not None:
                spot.report("only for the dynamodb store", name)
        # Offline (linted away from the host that runs it) the directory need not be here.
        if store.path is not None and not spot.decoder.offline and not store.path.parent.is_dir():
            spot.report(f"{store.path}: the directory {store.path.parent} does not exist", "path")
    return store


def check_login(login: LoginConfig, spot: Spot) -> LoginConfig:
    paths = ("login_path", "callback_path", "logout_path", "backchannel_logout_path")
    for name in paths:
        if why := path_prefix_problem(getattr(login, name)):
            spot.report(why, name)
        elif getattr(login, name) == "/":
            spot.report("must not be '/'", name)
    values = [getattr(login, name) for name in paths]
    if len(set(values)) != len(values):
        spot.report("login_path, callback_path, logout_path and backchannel_logout_path must differ")
    if not _COOKIE_NAME.fullmatch(login.session_cookie):
        # __Host-: only this host, Path=/, Secure; no subdomain can set or shadow it (session fixation).
        spot.report("must start with __Host- followed by 1-64 cookie-name characters", "session_cookie")
    check_positive(login, spot, "session_lifetime", "idle_timeout", "login_timeout")
    if login.refresh_margin < 0:
        spot.report("must not be negative", "refresh_margin")
    if login.login_timeout > MAX_LOGIN_TIMEOUT:
        spot.report(f"must be at most {MAX_LOGIN_TIMEOUT:g} seconds: a login state is short-lived", "login_timeout")
    if login.idle_timeout > login.session_lifetime:
        spot.report("must not exceed session_lifetime", "idle_timeout")
    spot.report_unreadable(login.key_file, "key_file")
    return login


def check_session_keys(config: Config, spot: Spot, env: Mapping[str, str]) -> None:
    """The key ring sealing cookies: a file, or $IDGATE_SESSION_KEYS at runtime (offline, it may come then)."""
    if config.login is not None and config.login.key_file is None and not spot.decoder.offline \
            and not env.get(ENV_SESSION_KEYS):
        spot.child("login").report(f"needs the session key ring: key_file, or ${ENV_SESSION_KEYS}", "key_file")


def check_login_references(config: Config, spot: Spot) -> None:
    """Cross references: login routes need an issuer with a client, a client needs `login:`, and the
    login paths must not shadow another surface's."""
    clients = [issuer.issuer for issuer in config.issuers if issuer.client is not None]
    login = config.login
    for i, issuer in enumerate(config.issuers):
        if issuer.client is not None and login is None:
            spot.child("issuers", i).report("browser login needs the login: section (session key, store)", "client")
        if issuer.client is not None and login is not None:
            for j, uri in enumerate(issuer.client.redirect_uris):
                if urlsplit(uri).path != login.callback_path:
                    spot.child("issuers", i).child("client").report(
                        f"the path must be login.callback_path ({login.callback_path})", "redirect_uris", j)
    for i, route in enumerate(config.routes):
        route_spot = spot.child("routes", i)
        if route.login_issuer is not None and route.login_issuer not in clients:
            route_spot.report("names no issuer that has a client", "login_issuer")
        elif route.login and route.login_issuer is None and len(clients) != 1:
            route_spot.report("needs an issuer with a client" if not clients else
                              "several issuers have a client: name one with login_issuer", "login")
    if login is None:
        return
    taken = [p for on, p in ((config.forward_auth.enabled, config.forward_auth.path),
                             (config.credentials.enabled, config.credentials.path),
                             (config.aws.gateway.enabled, config.aws.gateway.path),
                             (config.ext_authz.http is not None,
                              config.ext_authz.http.path_prefix if config.ext_authz.http else "")) if on]
    for name in ("login_path", "callback_path", "logout_path", "backchannel_logout_path"):
        path = getattr(login, name)
        if any(path.startswith(other) or other.startswith(path) for other in taken):
            spot.child("login").report("must not overlap the forward_auth, credentials, gateway or ext_authz paths",
                                       name)
