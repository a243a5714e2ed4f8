"""What both halves of the gateway benchmark share: idgate's config (the tests' gateway policy with 100
generated HTTP rules beside it, a fresh key ring, the issuer's key as a JWKS file, audit fsync on) and
the tenant whose GetItem calls are measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench._stack import write_policies
from proxy.aws.gateway_keys import new_key_ring_text
from proxy.dev.issuer import DemoIdentity, DevIssuer
from tests.harness.broker import DEV_AUDIENCE, write_broker_config
from tests.harness.gateway import GATEWAY_PATH, GATEWAY_POLICY
from tests.harness.processes import HOST

ISSUER = "https://bench-issuer.invalid"     # tokens are minted in-process; idgate reads the key from a file
AUDIENCE = DEV_AUDIENCE
RULES = 100
TENANT = DemoIdentity("svc-etl-acme", ("data-eng",), {"tenant": "acme"})   # tenant-orders: its own rows

__all__ = ["AUDIENCE", "GATEWAY_PATH", "ISSUER", "TENANT", "tenant_token", "write_config"]


def tenant_token(issuer: DevIssuer) -> str:
    return issuer.mint(TENANT, lifetime=3600)


def write_config(home: Path, issuer: DevIssuer, *, endpoint: str, sts_endpoint: str | None = None,
                 port: int = 0, admin_port: int = 0, fsync: bool = True) -> Path:
    """idgate.yaml in `home` for the gateway in front of `endpoint`, the credentials endpoint on, and its
    audit log in `home/audit` (fsync on unless told otherwise)."""
    jwks = home / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    ring = home / "gateway-keys.json"
    ring.write_text(new_key_ring_text("k1"))
    ring.chmod(0o600)
    aws: dict[str, Any] = {"gateway": {"enabled": True, "key_file": str(ring), "endpoint": endpoint}}
    if sts_endpoint is not None:
        aws["sts_endpoint"] = sts_endpoint
    path = write_broker_config(
        home, issuers=[{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks_file": str(jwks)}],
        policy=GATEWAY_POLICY.replace("DEV_ISSUER", ISSUER), aws=aws,
        listen={"host": HOST, "port": port}, admin={"host": HOST, "port": admin_port},
        audit={"path": str(home / "audit" / "audit.jsonl"), "fsync": fsync})
    write_policies(home / "policies", ISSUER, RULES)
    return path
