"""Bounded JSON exchanges with an issuer (discovery, JWKS, the token endpoint): a size cap, a timeout, no
redirects, and errors whose message names the endpoint without its query (safe for logs and /readyz)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import yarl

MAX_DOCUMENT_BYTES = 512 * 1024       # discovery, JWKS and token answers are a few KiB
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=10.0, connect=5.0)


class FetchError(Exception):
    """An exchange with the issuer failed; the message is safe for /readyz and logs."""


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    """The JSON document at `url`, which must answer 200."""
    status, body = await _exchange(session, "GET", url, None, {})
    if status != 200:
        raise FetchError(f"HTTP {status} from {where(url)}")
    return _json(body, url)


async def post_form(session: aiohttp.ClientSession, url: str, form: Mapping[str, str],
                    headers: Mapping[str, str]) -> tuple[int, Any]:
    """POST a form and read a JSON answer, whatever its status (an OAuth error is JSON with a 400)."""
    status, body = await _exchange(session, "POST", url, dict(form), headers)
    return status, _json(body, url)


async def _exchange(session: aiohttp.ClientSession, method: str, url: str, form: dict[str, str] | None,
                    headers: Mapping[str, str]) -> tuple[int, bytes]:
    try:
        async with session.request(method, url, data=form, timeout=FETCH_TIMEOUT, allow_redirects=False,
                                   headers={"Accept": "application/json", **headers}) as response:
            status = response.status
            if (response.content_length or 0) > MAX_DOCUMENT_BYTES:
                raise FetchError(f"document from {where(url)} is too large")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise FetchError(f"document from {where(url)} is too large")
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        raise FetchError(f"{type(exc).__name__} fetching {where(url)}") from exc
    return status, bytes(body)


def _json(body: bytes, url: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise FetchError(f"document from {where(url)} is not JSON") from exc


def where(url: str) -> str:
    # Scheme, host and path only: a query string could carry something that should not reach logs.
    parsed = yarl.URL(url)
    return str(parsed.with_query(None).with_fragment(None).with_user(None).with_password(None))
