"""A DynamoDB-gateway stack per test: a development issuer for tenant tokens, moto as STS and DynamoDB,
idgate in-process with the credentials endpoint and the gateway on, and a real boto3 worker in a
subprocess whose only AWS settings are the container-credentials URL, its token file and
AWS_ENDPOINT_URL_DYNAMODB pointing at idgate.  Registered by tests/conftest.py (pytest_plugins)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from proxy.aws.credentials import AwsCredentials
from proxy.aws.gateway_keys import new_key_ring_text
from proxy.aws.sigv4 import resign
from proxy.aws.sts import StsClientFactory
from tests.harness.broker import CREDENTIALS_PATH, DEV_AUDIENCE, write_broker_config, worker_env
from tests.harness.moto import ACCOUNT, REGION, MotoServer, sts_client_factory
from tests.harness.paths import HARNESS
from tests.harness.servers import LocalIssuer, RunningIdgate, local_issuer, running_idgate

GATEWAY_PATH = "/.idgate/dynamodb"
TENANT_ROLE = f"arn:aws:iam::{ACCOUNT}:role/tenant"
WORKER = HARNESS / "gateway_worker.py"

# DEV_ISSUER is replaced by the running issuer's URL.
GATEWAY_POLICY = """
rules:
  - id: tenant-orders                   # a tenant's own rows of `orders`, through the gateway only
    who: {issuer: DEV_ISSUER, groups: [data-eng]}
    aws:
      role_arn: arn:aws:iam::123456789012:role/tenant
      gateway: true
      dynamodb:
        - table: orders
          indexes: [by-sk, by-status]
          actions: [GetItem, PutItem, UpdateItem, DeleteItem, Query, BatchGetItem, BatchWriteItem,
                    ConditionCheckItem, PartiQLSelect, PartiQLInsert, PartiQLUpdate, PartiQLDelete]
          leading_keys: ["${claims.tenant}"]
        - table: invoices               # named columns of the tenant's invoices
          actions: [GetItem, Query, UpdateItem, PutItem, DeleteItem]
          leading_keys: ["${claims.tenant}"]
          attributes: [pk, sk, total]
  - id: ops-scan                        # the operators' group may scan, with no key restriction
    who: {issuer: DEV_ISSUER, groups: [ops]}
    aws:
      role_arn: arn:aws:iam::123456789012:role/ops
      gateway: true
      dynamodb: [{table: orders, actions: [Scan, Query, GetItem, DescribeTable]}]
"""


def create_tables(moto: MotoServer) -> None:
    """`orders` (pk, sk; an LSI on sk2 keyed by pk, a GSI keyed by status), `invoices`, `secrets`."""
    client = moto.client("dynamodb")
    strings = [{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "sk", "sk2", "status")]
    client.create_table(
        TableName="orders", BillingMode="PAY_PER_REQUEST", AttributeDefinitions=strings,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        LocalSecondaryIndexes=[{"IndexName": "by-sk", "Projection": {"ProjectionType": "ALL"}, "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk2", "KeyType": "RANGE"}]}],
        GlobalSecondaryIndexes=[{"IndexName": "by-status", "Projection": {"ProjectionType": "ALL"},
                                 "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"}]}])
    for name in ("invoices", "secrets"):
        moto.create_table(name)


@dataclass
class GatewayStack:
    dev: LocalIssuer
    moto: MotoServer
    idgate: RunningIdgate
    tmp: Path

    @property
    def credentials_url(self) -> str:
        return self.idgate.url + CREDENTIALS_PATH

    @property
    def gateway_url(self) -> str:
        return self.idgate.url + GATEWAY_PATH

    def token_file(self, name: str, subject: str, groups: tuple[str, ...] = ("data-eng",), **claims: Any) -> Path:
        path = self.tmp / f"{name}.token"
        path.write_text(self.dev.token(subject, groups, **claims))
        return path

    async def run_worker(self, token_file: Path, *steps: str, home: str = "worker") -> list[dict[str, Any]]:
        """Run the boto3 worker's `steps` (tests/harness/gateway_worker.py) with gateway settings only;
        one JSON result per step."""
        workdir = self.tmp / home
        workdir.mkdir(exist_ok=True)
        env = worker_env(workdir, self.credentials_url, token_file, self.gateway_url)
        # Run by path with -P: the harness's moto.py must not shadow the real package.
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-P", str(WORKER), *steps, env=env, cwd=workdir,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(120):
            out, err = await process.communicate()
        if process.returncode != 0:
            raise AssertionError(f"worker exited {process.returncode}: {err.decode()[-4000:]}")
        return [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]

    async def vend(self, subject: str, groups: tuple[str, ...] = ("data-eng",), **claims: Any) -> AwsCredentials:
        """Gateway credentials from the credentials endpoint, as botocore's container provider gets them."""
        token = self.dev.token(subject, groups, **claims)
        async with aiohttp.ClientSession() as http, \
                http.get(self.credentials_url, headers={"Authorization": token}) as response:
            assert response.status == 200, await response.text()
            body = await response.json()
        return AwsCredentials(body["AccessKeyId"], body["SecretAccessKey"], body["Token"], time.time() + 3600)

    def signed(self, credentials: AwsCredentials, *, target: str = "DynamoDB_20120810.GetItem", body: bytes = b"{}",
               region: str = REGION, service: str = "dynamodb", now: float | None = None) -> list[tuple[str, str]]:
        """The headers of a call to the gateway signed with `credentials` (botocore's SigV4, via idgate's resign)."""
        return resign("POST", self.gateway_url, [("Content-Type", "application/x-amz-json-1.0"),
                                                 ("X-Amz-Target", target)],
                      body, credentials, region=region, service=service, now=now)

    async def send(self, headers: list[tuple[str, str]], body: bytes) -> tuple[int, dict[str, Any]]:
        """POST to the gateway exactly these headers and body; DynamoDB's JSON answer."""
        async with aiohttp.ClientSession(skip_auto_headers=("Content-Type",)) as http, \
                http.post(self.gateway_url, data=body, headers=CIMultiDict(headers)) as response:
            text = await response.text()
            assert response.headers.get("Content-Type", "").startswith("application/x-amz-json-1.0")
            return response.status, json.loads(text)

    async def call(self, credentials: AwsCredentials, body: bytes,
                   target: str = "DynamoDB_20120810.GetItem") -> tuple[int, dict[str, Any]]:
        return await self.send(self.signed(credentials, target=target, body=body), body)

    async def records(self, surface: str = "dynamodb") -> list[dict[str, Any]]:
        return [r for r in await self.idgate.audit_records() if r.get("surface") == surface]


GatewayFactory = Callable[..., Awaitable[GatewayStack]]


@pytest.fixture
async def make_gateway_stack(tmp_path: Path, moto: MotoServer) -> AsyncIterator[GatewayFactory]:
    async def factory(*, policy: str = GATEWAY_POLICY, gateway: dict[str, Any] | None = None,
                      sts_client: StsClientFactory | None = None, **top: Any) -> GatewayStack:
        dev = await exits.enter_async_context(local_issuer(DEV_AUDIENCE))
        ring = tmp_path / "gateway-keys.json"
        ring.write_text(new_key_ring_text("k1"))
        ring.chmod(0o600)
        path = write_broker_config(
            tmp_path, issuers=[{"issuer": dev.issuer.issuer_url, "audiences": [DEV_AUDIENCE]}],
            policy=policy.replace("DEV_ISSUER", dev.issuer.issuer_url),
            aws={"sts_endpoint": moto.url, "gateway": {
                "enabled": True, "key_file": str(ring), "endpoint": moto.url, **(gateway or {})}}, **top)
        idgate = await exits.enter_async_context(running_idgate(path, sts_client=sts_client or sts_client_factory()))
        return GatewayStack(dev, moto, idgate, tmp_path)

    async with AsyncExitStack() as exits:
        yield factory


@pytest.fixture
async def gateway_stack(make_gateway_stack: GatewayFactory, moto: MotoServer) -> GatewayStack:
    stack = await make_gateway_stack()
    for role in ("tenant", "ops"):
        moto.create_role(role)
    create_tables(moto)
    return stack


__all__ = ["REGION", "TENANT_ROLE", "GatewayStack", "create_tables"]
