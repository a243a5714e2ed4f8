"""Shared test factories: identities, signing keys and tokens.  Imported by tests, never by proxy/."""

from __future__ import annotations

import time
from types import MappingProxyType
from typing import Any

from proxy.model import Identity

DEFAULT_ISSUER = "https://issuer.test"


def make_identity(
    subject: str = "svc-etl-7",
    *,
    issuer: str = DEFAULT_ISSUER,
    groups: tuple[str, ...] = (),
    client_id: str | None = None,
    audience: tuple[str, ...] = ("orders-api",),
    claims: dict[str, Any] | None = None,
    expires_in: float = 300.0,
) -> Identity:
    all_claims: dict[str, Any] = {"iss": issuer, "sub": subject, "groups": list(groups)}
    all_claims.update(claims or {})
    return Identity(
        issuer=issuer,
        subject=subject,
        audience=audience,
        client_id=client_id,
        groups=groups,
        expires_at=time.time() + expires_in,
        claims=MappingProxyType(all_claims),
    )
