"""Temporary AWS credentials as idgate holds and vends them, and their container-credentials wire form.
Pure: no boto3, so the pipeline and edges can use it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class AwsCredentials:
    """STS session credentials; the secret and the token never appear in a repr, a log or the audit."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: float                      # epoch seconds

    def remaining(self, now: float) -> float:
        return self.expiration - now

    def expiration_iso(self) -> str:
        return iso_z(self.expiration)

    def container_response(self) -> dict[str, Any]:
        """The body botocore's container provider reads.  No AccountId: it would switch DynamoDB to the
        account endpoint, which gateway-mode clients must not use (DESIGN §5)."""
        return {
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "Token": self.session_token,
            "Expiration": self.expiration_iso(),
        }


@dataclass(frozen=True, slots=True)
class Vended:
    credentials: AwsCredentials
    source: str                            # "cache", "sts" or "stale" (a refresh failed; still valid)


def iso_z(epoch: float) -> str:
    """ISO 8601 in UTC with a Z, to the second (what AWS itself answers)."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
