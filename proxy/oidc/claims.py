"""Checks of a signature-verified token's header and claims that idgate does itself, because PyJWT
is lax about them (types of exp/nbf/iat, typ, max age); the result is the caller's Identity."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from proxy.config import IssuerConfig
from proxy.core.errors import AuthenticationError
from proxy.core.model import Identity
from proxy.core.reasons import Reason

MAX_GROUPS = 256
# A NumericDate idgate believes: from the epoch to the end of year 9999.  Beyond it, a huge integer would
# overflow a float (a 500) and a huge float would make a token that never expires.
MAX_NUMERIC_DATE = 253402300799


def identity_from_claims(header: Mapping[str, Any], claims: dict[str, Any], issuer: IssuerConfig,
                         now: float) -> Identity:
    """The Identity of a token whose signature already verified; AuthenticationError otherwise."""
    audience, exp = check_token_claims(header, claims, issuer, now)
    return mapped_identity(claims, issuer, audience, exp)


def check_token_claims(header: Mapping[str, Any], claims: Mapping[str, Any], issuer: IssuerConfig,
                       now: float) -> tuple[tuple[str, ...], float]:
    """Type, times and audience of a signature-verified token: its audience and expiry, or AuthenticationError."""
    _check_type(header, issuer)
    leeway = issuer.leeway
    exp = _time_claim(claims, "exp")
    if exp is None:
        raise AuthenticationError("token has no expiry", reason=Reason.MISSING_CLAIM)
    if now >= exp + leeway:
        raise AuthenticationError("token has expired", reason=Reason.TOKEN_EXPIRED)
    nbf = _time_claim(claims, "nbf")
    if nbf is not None and now + leeway < nbf:
        raise AuthenticationError("token is not valid yet", reason=Reason.TOKEN_NOT_YET_VALID)
    iat = _time_claim(claims, "iat")
    if iat is not None and now + leeway < iat:
        raise AuthenticationError("token is issued in the future", reason=Reason.ISSUED_IN_FUTURE)
    if issuer.max_age is not None:
        if iat is None:
            raise AuthenticationError("token has no issue time", reason=Reason.MISSING_CLAIM)
        if now - leeway > iat + issuer.max_age:
            raise AuthenticationError("token is older than the accepted maximum age", reason=Reason.TOKEN_TOO_OLD)
    # A token that stays valid for longer than the issuer's tokens should (a leaked long-lived token, an
    # issuer misconfigured): its lifetime from issue, or from now when it does not say when it was issued.
    if exp - (iat if iat is not None else now) > issuer.max_lifetime + leeway:
        raise AuthenticationError("token lifetime exceeds the accepted maximum", reason=Reason.TOKEN_LIFETIME_TOO_LONG)
    return _audience(claims, issuer), float(exp)


def mapped_identity(claims: Mapping[str, Any], issuer: IssuerConfig, audience: tuple[str, ...],
                    expires_at: float) -> Identity:
    """Subject, client and groups as policy sees them, from claims already checked for signature, type,
    time and audience: the one mapping, shared by the verifier and `idgate check`."""
    subject = claims.get("sub")
    if subject is None:
        raise AuthenticationError("token has no subject", reason=Reason.MISSING_CLAIM)
    if not isinstance(subject, str) or not subject:
        raise AuthenticationError("token subject is not a non-empty string", reason=Reason.INVALID_CLAIM)
    return Identity(
        issuer=issuer.issuer,
        subject=subject,
        audience=audience,
        client_id=_client_id(claims, issuer),
        groups=_groups(claims.get(issuer.groups_claim)),
        expires_at=expires_at,
        claims=MappingProxyType(claims),
    )


def _normalize_typ(typ: str) -> str:
    # RFC 9068 §4: "at+jwt" and "application/at+jwt" are the same media type, compared case-insensitively.
    typ = typ.lower()
    return typ.removeprefix("application/")


def _check_type(header: Mapping[str, Any], issuer: IssuerConfig) -> None:
    if issuer.require_typ is None:
        return
    typ = header.get("typ")
    if not isinstance(typ, str) or _normalize_typ(typ) != _normalize_typ(issuer.require_typ):
        raise AuthenticationError("token is not of the required type", reason=Reason.WRONG_TOKEN_TYPE)


def _time_claim(claims: Mapping[str, Any], name: str) -> int | float | None:
    if name not in claims:
        return None
    value = claims[name]
    # bool is an int subclass and a numeric string is what PyJWT would quietly accept: neither is a time.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthenticationError(f"token {name} claim is not a number", reason=Reason.INVALID_CLAIM)
    if not 0 <= value <= MAX_NUMERIC_DATE:   # also false for NaN
        raise AuthenticationError(f"token {name} claim is not a sane time", reason=Reason.INVALID_CLAIM)
    return value


def _audience(claims: Mapping[str, Any], issuer: IssuerConfig) -> tuple[str, ...]:
    aud = claims.get("aud")
    if aud is None:
        raise AuthenticationError("token has no audience", reason=Reason.MISSING_CLAIM)
    audience = (aud,) if isinstance(aud, str) else aud
    if not isinstance(audience, list | tuple) or not audience or not all(isinstance(a, str) for a in audience):
        raise AuthenticationError("token audience is not a string or a list of strings", reason=Reason.INVALID_CLAIM)
    if not any(a in issuer.audiences for a in audience):
        raise AuthenticationError("token audience is not accepted", reason=Reason.BAD_AUDIENCE)
    return tuple(audience)


def _client_id(claims: Mapping[str, Any], issuer: IssuerConfig) -> str | None:
    azp, client_id = claims.get("azp"), claims.get("client_id")
    for value in (azp, client_id):
        if value is not None and not isinstance(value, str):
            raise AuthenticationError("token client id is not a string", reason=Reason.INVALID_CLAIM)
    if azp is not None and client_id is not None and azp != client_id:
        raise AuthenticationError("token azp and client_id disagree", reason=Reason.INVALID_CLAIM)
    chosen = azp if azp is not None else client_id
    if issuer.allowed_client_ids and chosen not in issuer.allowed_client_ids:
        raise AuthenticationError("token client is not allowed", reason=Reason.BAD_CLIENT)
    return chosen


def _groups(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    # Dropping what is not a string (or the whole claim) could drop the very group a deny rule names.
    if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
        raise AuthenticationError("token groups claim is not a string or a list of strings", reason=Reason.INVALID_CLAIM)
    if len(value) > MAX_GROUPS:
        # Truncating could drop the very group a deny rule names: refuse instead.
        raise AuthenticationError("token carries too many groups", reason=Reason.TOO_MANY_GROUPS)
    return tuple(value)
