"""A credential-broker stack per test: the real OpenID Provider and a development issuer for tokens, moto
as STS (and IAM, DynamoDB), idgate in-process with the credentials endpoint on.  Fixtures for the
integration and security tests of the broker, registered by tests/conftest.py (pytest_plugins)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.aws.sts import StsClientFactory
from tests.harness.moto import ACCOUNT, REGION, MotoServer, sts_client_factory
from tests.harness.oidc_provider import OidcProvider
from tests.harness.processes import HOST
from tests.harness.servers import LocalIssuer, RunningIdgate, local_issuer, running_idgate

OP_AUDIENCE = "https://orders.internal"     # a resource of tests/harness/oidc_provider_node/clients.json
DEV_AUDIENCE = "broker-api"
CREDENTIALS_PATH = "/.idgate/credentials"
ETL_ROLE = f"arn:aws:iam::{ACCOUNT}:role/etl"

# OP_ISSUER / DEV_ISSUER are replaced by the running issuers' URLs.
BROKER_POLICY = """
rules:
  - id: etl-orders                      # svc-etl-7 works on its own rows of `orders`
    who: {issuer: OP_ISSUER, subject: svc-etl-7}
    aws:
      role_arn: arn:aws:iam::123456789012:role/etl
      dynamodb:
        - table: orders
          actions: [GetItem, PutItem, Query, UpdateItem, BatchWriteItem]
          leading_keys: ["${claims.sub}"]
          attributes: [pk, sk, status, amount]
  - id: etl-invoices-read               # ...and may also read invoices, under another role
    who: {issuer: OP_ISSUER, subject: svc-etl-7}
    aws:
      role_arn: arn:aws:iam::123456789012:role/auditor
      dynamodb: [{table: invoices, actions: [GetItem, Query], indexes: [by-date]}]
  - id: reports-read
    who: {issuer: OP_ISSUER, subject: svc-report}
    aws:
      role_arn: arn:aws:iam::123456789012:role/reporting
      dynamodb: [{table: reports, actions: [Query]}]
  - id: tenant-rows                     # development-issuer identities: rows of their tenant
    who: {issuer: DEV_ISSUER, groups: [data-eng]}
    aws:
      role_arn: arn:aws:iam::123456789012:role/tenant
      dynamodb: [{table: orders, actions: [GetItem, Query], leading_keys: ["${claims.tenant}"]}]
  - id: web-http-only                   # an identity with rules, but no AWS rule
    who: {issuer: DEV_ISSUER, subject: svc-web-1}
    http: [{paths: ["/v1/**"]}]
"""


def write_broker_config(tmp: Path, *, issuers: list[dict[str, Any]], policy: str, aws: dict[str, Any],
                        **top: Any) -> Path:
    policies = tmp / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "broker.yaml").write_text(policy)
    config = {
        "listen": {"host": HOST, "port": 0},
        "admin": {"host": HOST, "port": 0},
        "issuers": issuers,
        "policies_dir": str(policies),
        "credentials": {"enabled": True, "path": CREDENTIALS_PATH},
        "aws": {"region": REGION, **aws},
        "audit": {"path": str(tmp / "audit" / "audit.jsonl")},
        **top,
    }
    path = tmp / "idgate.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    text: str
    headers: dict[str, str]


@dataclass
class BrokerStack:
    op: OidcProvider
    dev: LocalIssuer
    moto: MotoServer
    idgate: RunningIdgate
    http: aiohttp.ClientSession

    @property
    def credentials_url(self) -> str:
        return self.idgate.url + CREDENTIALS_PATH

    def op_token(self, client_id: str = "svc-etl-7") -> str:
        return self.op.token(client_id, OP_AUDIENCE)

    async def fetch(self, token: str | None, *, role: str | None = None, scheme: str = "",
                    headers: dict[str, str] | None = None, query: str | None = None) -> Answer:
        """GET the credentials endpoint as botocore does (raw token) or with `scheme` ("Bearer ")."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = scheme + token
        url = self.credentials_url + (query if query is not None else (f"?role={role}" if role else ""))
        async with self.http.get(url, headers=sent) as response:
            text = await response.text()
            try:
                body = json.loads(text)
            except ValueError:
                body = {}
            return Answer(response.status, body, text, dict(response.headers))

    async def credential_decisions(self) -> list[dict[str, Any]]:
        return [r for r in await self.idgate.audit_records()
                if r["event"] == "decision" and r["surface"] == "credentials"]

    async def settled(self) -> None:
        await self.idgate.settled()
        assert self.idgate.services.broker is not None
        await self.idgate.services.broker.idle()


def worker_env(tmp_path: Path, credentials_url: str, token_file: Path, dynamodb_url: str) -> dict[str, str]:
    """Only what a broker-fed worker has: no AWS_* from the test runner, empty profile files."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config").write_text("")
    (home / "credentials").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BOTO", "PYTHON"))}
    env.update({
        "HOME": str(home),
        "AWS_CONFIG_FILE": str(home / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": credentials_url,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file),
        "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_url,
        "AWS_DEFAULT_REGION": "us-east-1",
    })
    return env


BrokerFactory = Callable[..., Awaitable[BrokerStack]]


@pytest.fixture
async def make_broker_stack(tmp_path: Path, oidc_provider: OidcProvider,
                            moto: MotoServer) -> AsyncIterator[BrokerFactory]:
    """Factory: tweak the policy, the aws section or the STS client (a fake STS) before idgate starts."""
    async def factory(*, policy: str = BROKER_POLICY, aws: dict[str, Any] | None = None,
                      sts_client: StsClientFactory | None = None, **top: Any) -> BrokerStack:
        dev = await exits.enter_async_context(local_issuer(DEV_AUDIENCE))
        issuers = [
            {"issuer": oidc_provider.issuer, "audiences": [OP_AUDIENCE], "require_typ": "at+jwt"},
            {"issuer": dev.issuer.issuer_url, "audiences": [DEV_AUDIENCE]},
        ]
        policy_text = policy.replace("OP_ISSUER", oidc_provider.issuer).replace("DEV_ISSUER", dev.issuer.issuer_url)
        path = write_broker_config(tmp_path, issuers=issuers, policy=policy_text,
                                   aws={"sts_endpoint": moto.url, **(aws or {})}, **top)
        idgate = await exits.enter_async_context(running_idgate(path, sts_client=sts_client or sts_client_factory()))
        http = await exits.enter_async_context(aiohttp.ClientSession())
        return BrokerStack(oidc_provider, dev, moto, idgate, http)

    async with AsyncExitStack() as exits:
        yield factory


@pytest.fixture
async def broker_stack(make_broker_stack: BrokerFactory) -> BrokerStack:
    return await make_broker_stack()
