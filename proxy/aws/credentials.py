"""Temporary AWS credentials as idgate holds and vends them, and their container-credentials wire form.
Pure: no boto3, so the pipeline and edges can use it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class AwsCredentials:
    """STS session credentials; the secret and the token never appear in a repr, a log or the audit."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: float                      # epoch seconds
    # Rendered once per STS answer, not per vend: a cache hit then costs no formatting at all.
    _expiration_iso: str = field(init=False, repr=False, compare=False)
    _container_body: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        expiration = iso_z(self.expiration)
        object.__setattr__(self, "_expiration_iso", expiration)
        # No AccountId: it would switch DynamoDB to the account endpoint, which gateway-mode clients must
        # not use (DESIGN §5).
        object.__setattr__(self, "_container_body", json.dumps({
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "Token": self.session_token,
            "Expiration": expiration,
        }).encode())

    def remaining(self, now: float) -> float:
        return self.expiration - now

    def expiration_iso(self) -> str:
        return self._expiration_iso

    def container_body(self) -> bytes:
        """The JSON body botocore's container provider reads: AccessKeyId, SecretAccessKey, Token, Expiration."""
        return self._container_body


@dataclass(frozen=True, slots=True)
class Vended:
    credentials: AwsCredentials
    source: str                            # "cache", "sts" or "stale" (a refresh failed; still valid)


def iso_z(epoch: float) -> str:
    """ISO 8601 in UTC with a Z, to the second (what AWS itself answers)."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
