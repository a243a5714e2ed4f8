"""What arrives on the wire before any key is involved: the `Authorization: Bearer` header and the
strict shape of a compact JWS (three canonical base64url parts, JSON object header and payload)."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from proxy.core import strict_json
from proxy.core.errors import AuthenticationError, BadRequest
from proxy.core.reasons import Reason

# RFC 9110 auth-scheme (a tchar run) and RFC 6750 b64token; exactly one space between them.
_AUTH_SCHEME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", re.ASCII)
_BEARER_CREDENTIALS = re.compile(r" [A-Za-z0-9\-._~+/]+=*", re.ASCII)
# No "=" padding, no other characters; the signature may be empty so that `alg: none` is refused
# for what it is (alg_not_allowed) rather than as a shape error.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*", re.ASCII)


@dataclass(frozen=True, slots=True)
class CompactJws:
    """A compact JWS whose shape is valid; nothing in it is trusted yet."""

    header: dict[str, Any]
    payload: dict[str, Any]


def bearer_token(authorization_header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None when there is no header.

    The scheme is case-insensitive (RFC 9110); anything but exactly one space and one b64token
    after it is malformed.
    """
    if authorization_header is None:
        return None
    scheme = _AUTH_SCHEME.match(authorization_header)
    if scheme is None:
        raise BadRequest("malformed Authorization header", reason=Reason.MALFORMED_AUTHORIZATION)
    if scheme.group().lower() != "bearer":
        raise AuthenticationError("only Bearer authorization is accepted", reason=Reason.UNSUPPORTED_SCHEME)
    credentials = authorization_header[scheme.end():]
    if not _BEARER_CREDENTIALS.fullmatch(credentials):
        raise BadRequest("malformed Bearer authorization", reason=Reason.MALFORMED_AUTHORIZATION)
    return credentials[1:]


def parse_compact_jws(token: str) -> CompactJws:
    """Split and decode a compact JWS, refusing anything a lenient parser would silently repair."""
    if not _COMPACT_JWS.fullmatch(token):
        raise _malformed("token is not a compact JWS")
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = _json_object(_b64decode(header_b64), "header")
    payload = _json_object(_b64decode(payload_b64), "payload")
    _b64decode(signature_b64)
    return CompactJws(header=header, payload=payload)


def _b64decode(part: str) -> bytes:
    # Only the canonical encoding is accepted (no non-zero trailing bits, no impossible length),
    # so one token has exactly one spelling.
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise _malformed("token part is not base64url") from exc
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != part:
        raise _malformed("token part is not canonical base64url")
    return raw


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        return strict_json.loads_object(raw)
    except ValueError as exc:
        raise _malformed(f"token {what} is not a JSON object") from exc


def _malformed(message: str) -> AuthenticationError:
    return AuthenticationError(message, reason=Reason.MALFORMED_TOKEN)
