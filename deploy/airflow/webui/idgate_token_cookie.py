"""Airflow 3's API server behind idgate: an ASGI middleware that makes Airflow's own `_token` cookie, on every
request, one minted for the person idgate's X-Idgate-Assertion names (or no cookie at all).

Airflow authenticates the UI by that cookie.  Minted per request from the verified assertion, it cannot
outlive idgate's session nor speak for the person who used the browser before: log out at idgate, or log in
as someone else, and the very next request is Airflow's too.  A bearer token (the Execution API's, an API
client's own) is left alone: it is an explicit credential, not the browser's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from idgate_assertion import HEADER, AssertedIdentity, AssertionVerifier, InvalidAssertion

COOKIE = "_token"              # airflow.api_fastapi.auth.managers.base_auth_manager.COOKIE_NAME_JWT_TOKEN
_ASSERTION = HEADER.lower().encode()

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


def without_token_cookie(cookie_headers: list[bytes]) -> list[bytes]:
    """The request's cookie pairs, every `_token` pair left out (however many the client sent)."""
    pairs = [pair.strip() for header in cookie_headers for pair in header.split(b";")]
    return [pair for pair in pairs if pair and pair.split(b"=", 1)[0].strip() != COOKIE.encode()]


class IdgateTokenCookie:
    """`mint` turns a verified identity into an Airflow JWT, or None when it has no role in Airflow."""

    def __init__(self, app: Asgi, *, verifier: AssertionVerifier,
                 mint: Callable[[AssertedIdentity], str | None]) -> None:
        self.app = app
        self.verifier = verifier
        self.mint = mint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "headers": await self._headers(scope["headers"])}
        await self.app(scope, receive, send)

    async def _headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        cookies = without_token_cookie([value for name, value in headers if name == b"cookie"])
        assertions = [value for name, value in headers if name == _ASSERTION]
        token = await self._token(assertions[0].decode("latin-1")) if len(assertions) == 1 else None
        if token is not None:
            cookies.append(f"{COOKIE}={token}".encode())
        kept = [(name, value) for name, value in headers if name != b"cookie"]
        return kept + ([(b"cookie", b"; ".join(cookies))] if cookies else [])

    async def _token(self, assertion: str) -> str | None:
        try:
            # A key-set fetch (first request, idgate's key rotation) blocks: not on the server's loop.
            identity = await asyncio.to_thread(self.verifier.verify, assertion)
        except InvalidAssertion:
            return None
        return self.mint(identity)
