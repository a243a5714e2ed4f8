"""The development issuer's browser login: an authorization endpoint with a login page (pick a demo person),
the code and refresh-token grants (PKCE S256, one client, single-use codes), and RP-initiated logout.  For
`idgate demo` on loopback only: it authenticates nobody (anyone may click a person), which is its point."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from proxy.dev.issuer import DemoIdentity

DEMO_PEOPLE = {
    "alice": DemoIdentity("alice", ("operators",), {"name": "Alice (operators)"}),
    "mallory": DemoIdentity("mallory", (), {"name": "Mallory (no group)"}),
}
CODE_SECONDS = 60
ID_TOKEN_SECONDS = 600
_PARAMS = ("client_id", "redirect_uri", "scope", "state", "nonce", "code_challenge")


@dataclass(frozen=True, slots=True)
class _Grant:
    person: str
    session: str                   # the issuer's session id (`sid`)
    nonce: str | None
    challenge: str | None
    redirect_uri: str | None
    until: float


class DevLogin:
    """The code flow of the development issuer for one public client."""

    def __init__(self, issuer_url: str, client_id: str, redirect_uri: str, post_logout_redirect_uri: str,
                 sign: Callable[[dict[str, Any]], str]) -> None:
        self.issuer_url = issuer_url
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self.post_logout_redirect_uri = post_logout_redirect_uri
        self._sign = sign
        self._codes: dict[str, _Grant] = {}
        self._refresh: dict[str, _Grant] = {}

    def discovery(self) -> dict[str, Any]:
        return {"authorization_endpoint": f"{self.issuer_url}/authorize",
                "end_session_endpoint": f"{self.issuer_url}/end-session",
                "response_types_supported": ["code"], "code_challenge_methods_supported": ["S256"],
                "authorization_response_iss_parameter_supported": True,
                "id_token_signing_alg_values_supported": ["ES256"]}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/authorize", self._login_page)
        app.router.add_post("/authorize", self._logged_in)
        app.router.add_post("/token", self._token)
        app.router.add_get("/end-session", self._end_session)

    async def _login_page(self, request: web.Request) -> web.Response:
        params = request.query
        if (params.get("client_id") != self.client_id or params.get("redirect_uri") != self.redirect_uri
                or params.get("response_type") != "code" or params.get("code_challenge_method") != "S256"
                or not params.get("code_challenge")):
            return web.Response(status=400, text="unknown client, redirect_uri, or no PKCE S256\n")
        hidden = "".join(f'<input type="hidden" name="{name}" value="{html.escape(params.get(name, ""))}">'
                         for name in _PARAMS)
        buttons = "".join(f'<p><button name="person" value="{name}">{html.escape(str(who.claims["name"]))}'
                          "</button></p>" for name, who in DEMO_PEOPLE.items())
        page = ("<!doctype html><html><head><meta charset='utf-8'><title>idgate demo login</title></head><body>"
                "<h1>idgate demo issuer</h1><p>Development login: pick who you are (no password).</p>"
                f"<form method='post'>{hidden}{buttons}</form></body></html>")
        return web.Response(text=page, content_type="text/html")

    async def _logged_in(self, request: web.Request) -> web.Response:
        form = await request.post()
        person = str(form.get("person", ""))
        if person not in DEMO_PEOPLE or form.get("client_id") != self.client_id \
                or form.get("redirect_uri") != self.redirect_uri:
            return web.Response(status=400, text="unknown person or client\n")
        code = secrets.token_urlsafe(24)
        self._codes[code] = _Grant(person, uuid.uuid4().hex, str(form.get("nonce", "")) or None,
                                   str(form.get("code_challenge", "")), self.redirect_uri, time.time() + CODE_SECONDS)
        query = urlencode({"code": code, "state": str(form.get("state", "")), "iss": self.issuer_url})
        raise web.HTTPSeeOther(f"{self.redirect_uri}?{query}")

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("client_id") != self.client_id:
            return _oauth_error("invalid_client")
        if form.get("grant_type") == "authorization_code":
            grant = self._codes.pop(str(form.get("code", "")), None)   # single use
            verifier = str(form.get("code_verifier", ""))
            if grant is None or grant.until < time.time() or form.get("redirect_uri") != grant.redirect_uri \
                    or not hmac.compare_digest(_challenge(verifier), grant.challenge or ""):
                return _oauth_error("invalid_grant")
        elif form.get("grant_type") == "refresh_token":
            grant = self._refresh.pop(str(form.get("refresh_token", "")), None)   # rotated
            if grant is None:
                return _oauth_error("invalid_grant")
            grant = _Grant(grant.person, grant.session, None, None, None, 0.0)
        else:
            return _oauth_error("unsupported_grant_type")
        refresh_token = secrets.token_urlsafe(32)
        self._refresh[refresh_token] = grant
        return web.json_response({"token_type": "Bearer", "id_token": self._id_token(grant),
                                  "access_token": secrets.token_urlsafe(16), "expires_in": ID_TOKEN_SECONDS,
                                  "refresh_token": refresh_token}, headers={"Cache-Control": "no-store"})

    async def _end_session(self, request: web.Request) -> web.Response:
        # The demo has one browser: its logout ends every session here, refresh tokens included.
        self._refresh.clear()
        if request.query.get("post_logout_redirect_uri") == self.post_logout_redirect_uri:
            raise web.HTTPSeeOther(self.post_logout_redirect_uri)
        return web.Response(text="Logged out of the idgate demo issuer.\n")

    def _id_token(self, grant: _Grant) -> str:
        now = int(time.time())
        person = DEMO_PEOPLE[grant.person]
        claims: Mapping[str, Any] = {
            "iss": self.issuer_url, "sub": person.subject, "aud": self.client_id, "iat": now,
            "exp": now + ID_TOKEN_SECONDS, "sid": grant.session, "groups": list(person.groups), **person.claims,
            **({"nonce": grant.nonce} if grant.nonce else {})}
        return self._sign(dict(claims))


def _challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _oauth_error(error: str) -> web.Response:
    return web.json_response({"error": error}, status=400)
