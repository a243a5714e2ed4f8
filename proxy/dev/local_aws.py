"""A local AWS for `idgate demo`: moto_server (from moto[server]) on loopback as STS, IAM and DynamoDB,
holding the demo role and an `orders` table with one item of tenant acme, and as CloudWatch Logs and S3
(a bucket with Object Lock) for audit shipping.  Development only."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import boto3

from proxy.aws.sts import StsClient, StsClientFactory, boto3_sts_client
from proxy.config import AwsConfig

ROLE_NAME, TABLE = "etl", "orders"          # what policies/orders.yaml grants svc-etl-7
AUDIT_BUCKET = AUDIT_LOG_GROUP = "idgate-demo-audit"
AUDIT_INSTANCE = "demo"
GATEWAY_ROLE_NAME = "etl-gateway"           # ... and through the DynamoDB gateway
REGION = "us-east-1"
# moto accepts any keys; these are idgate's own (base) credentials in the demo, never a worker's.
DEMO_KEYS = {"aws_access_key_id": "demo", "aws_secret_access_key": "demo"}
_TRUST = ('{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:root"},'
          '"Action":["sts:AssumeRole","sts:TagSession","sts:SetSourceIdentity"]}]}')
_READY_TIMEOUT = 30.0


def moto_server_binary() -> str | None:
    beside = Path(sys.executable).parent / "moto_server"
    return str(beside) if beside.exists() else shutil.which("moto_server")


class LocalAws:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, log_file: Path) -> None:
        binary = moto_server_binary()
        if binary is None:
            raise FileNotFoundError("moto_server")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with open(log_file, "wb") as log:
            self._process = await asyncio.create_subprocess_exec(
                binary, "-H", self.host, "-p", str(self.port), env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT)
        await self._wait_ready(log_file)
        await asyncio.to_thread(self._seed)

    async def _wait_ready(self, log_file: Path) -> None:
        deadline = asyncio.get_running_loop().time() + _READY_TIMEOUT
        async with aiohttp.ClientSession(trust_env=False) as http:
            while True:
                try:
                    async with http.get(f"{self.url}/moto-api/data.json") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                assert self._process is not None
                if self._process.returncode is not None or asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"moto_server did not start; see {log_file}")
                await asyncio.sleep(0.1)   # polling for readiness, bounded by the deadline

    def _client(self, service: str) -> Any:   # a boto3 client (untyped)
        return boto3.session.Session(**DEMO_KEYS, region_name=REGION).client(service, endpoint_url=self.url)

    def _seed(self) -> None:
        for role in (ROLE_NAME, GATEWAY_ROLE_NAME):
            self._client("iam").create_role(RoleName=role, AssumeRolePolicyDocument=_TRUST)
        dynamodb = self._client("dynamodb")
        dynamodb.create_table(
            TableName=TABLE, BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                  {"AttributeName": "sk", "AttributeType": "S"}])
        dynamodb.put_item(TableName=TABLE, Item={
            "pk": {"S": "acme"}, "sk": {"S": "order-1"}, "status": {"S": "new"}, "amount": {"N": "42"}})
        self._client("s3").create_bucket(Bucket=AUDIT_BUCKET, ObjectLockEnabledForBucket=True)

    def sts_client_factory(self) -> StsClientFactory:
        session = boto3.session.Session(**DEMO_KEYS)

        def factory(config: AwsConfig) -> StsClient:
            return boto3_sts_client(config, session=session)

        return factory

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


def config_yaml(aws: LocalAws, key_ring: Path) -> str:
    """The idgate.yaml lines that turn the broker and the DynamoDB gateway on against this local AWS."""
    return textwrap.dedent(f"""\
        credentials: {{enabled: true, path: /.idgate/credentials}}
        aws:
          region: {REGION}
          sts_endpoint: {aws.url}
          gateway: {{enabled: true, key_file: {key_ring}, endpoint: {aws.url}}}
        """)


def audit_shipping_yaml(aws: LocalAws, anchor_key: Path) -> str:
    """The audit section's lines (under `audit:`) that ship the demo's records to this local AWS."""
    return textwrap.indent(textwrap.dedent(f"""\
        instance: {AUDIT_INSTANCE}
        rotate_seconds: 60
        shipping:
          cloudwatch: {{log_group: {AUDIT_LOG_GROUP}, endpoint: {aws.url}}}
          s3: {{bucket: {AUDIT_BUCKET}, prefix: audit/, endpoint: {aws.url}, object_lock: {{mode: COMPLIANCE, days: 1}}}}
          anchors: {{key_file: {anchor_key}, interval: 10}}
        """), "  ")


def use_demo_keys() -> None:
    """idgate's own AWS credentials in the demo are moto's demo keys (the shipper takes boto3's usual chain):
    never the keys of whoever runs the demo, which must not be sent to a local moto."""
    os.environ.update({"AWS_ACCESS_KEY_ID": DEMO_KEYS["aws_access_key_id"],
                       "AWS_SECRET_ACCESS_KEY": DEMO_KEYS["aws_secret_access_key"], "AWS_DEFAULT_REGION": REGION})
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(name, None)


def write_anchor_key(path: Path) -> Path:
    from proxy.keys import new_private_key_pem

    if not path.exists():
        path.write_bytes(new_private_key_pem())
        path.chmod(0o600)
    return path


def write_key_ring(path: Path) -> Path:
    """A fresh key ring (the gateway's or the sessions') for the demo, owner-only as in production."""
    from proxy.aws.gateway_keys import new_key_ring_text

    path.write_text(new_key_ring_text("demo"))
    path.chmod(0o600)
    return path


def _boto3_get(idgate_url: str, token_file: Path, role: str, endpoint: str, tenant: str) -> str:
    """A shell line: a worker with no AWS keys, credentials from idgate, one GetItem of `tenant`'s item."""
    code = ("import boto3; s = boto3.Session(); print(s.get_credentials().method, s.client('dynamodb').get_item("
            f"TableName='{TABLE}', Key={{'pk': {{'S': '{tenant}'}}, 'sk': {{'S': 'order-1'}}}}, "
            "ProjectionExpression='pk,sk,amount').get('Item'))")
    return "\n".join([
        '  env -i PATH="$PATH" AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \\',
        f"    AWS_DEFAULT_REGION={REGION} AWS_ENDPOINT_URL_DYNAMODB={endpoint} AWS_MAX_ATTEMPTS=1 \\",
        f"    'AWS_CONTAINER_CREDENTIALS_FULL_URI={idgate_url}/.idgate/credentials?role={role}' \\",
        f"    AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={token_file} \\",
        f'    {sys.executable} -c "{code}"',
    ])


def instructions(aws: LocalAws, issuer_url: str, idgate_url: str, token_file: Path, anchor_key: Path) -> str:
    """Ready-to-paste commands: a worker with no AWS keys reads the demo table through idgate's broker,
    then through its DynamoDB gateway (allowed for tenant acme, refused for another tenant)."""
    gateway = f"{idgate_url}/.idgate/dynamodb"
    idgate = Path(sys.executable).parent / "idgate"
    return "\n".join([
        f"Credential broker: moto plays AWS at {aws.url} (role {ROLE_NAME}, table {TABLE})",
        f"  TOKEN=$(curl -s '{issuer_url}/token?sub=svc-etl-7'); printf %s \"$TOKEN\" > {token_file}",
        _boto3_get(idgate_url, token_file, ROLE_NAME, aws.url, "acme"),
        "",
        f"DynamoDB gateway: every item decided and audited by idgate (role {GATEWAY_ROLE_NAME}); acme's item",
        _boto3_get(idgate_url, token_file, GATEWAY_ROLE_NAME, gateway, "acme"),
        "",
        "Denied (AccessDeniedException): another tenant's item, through the gateway",
        _boto3_get(idgate_url, token_file, GATEWAY_ROLE_NAME, gateway, "globex"),
        "",
        "Denied (403): svc-web-1 has no AWS rule",
        f"  curl -s -H \"Authorization: $(curl -s '{issuer_url}/token?sub=svc-web-1')\" {idgate_url}/.idgate/credentials",
        "",
        f"Audit shipping: every record in CloudWatch Logs ({AUDIT_LOG_GROUP}, stream {AUDIT_INSTANCE}), each minute's "
        f"segment in s3://{AUDIT_BUCKET}/audit/{AUDIT_INSTANCE}/, signed anchors beside them",
        f"  export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_DEFAULT_REGION={REGION} \\",
        f"    AWS_ENDPOINT_URL_S3={aws.url} AWS_ENDPOINT_URL_CLOUDWATCH_LOGS={aws.url}",
        f"  {idgate} audit verify --anchors cloudwatch://{AUDIT_LOG_GROUP}/{AUDIT_INSTANCE} \\",
        f"    --anchor-key {anchor_key} cloudwatch://{AUDIT_LOG_GROUP}/{AUDIT_INSTANCE}",
        f"  {idgate} audit query cloudwatch://{AUDIT_LOG_GROUP}/{AUDIT_INSTANCE} --table {TABLE} "
        "--key acme --since 1h",
        "",
    ])
