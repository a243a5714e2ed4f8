"""Starts and drives a real moto server (`moto_server`, from moto[server]) as STS, IAM and DynamoDB: free
loopback port, polled readiness, state reset between tests, and moto's request recorder so tests see
exactly what idgate sent to STS."""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import boto3
from botocore.config import Config as BotoConfig

from tests.harness.processes import HOST, ManagedServer, ServerProcess, free_port

ACCOUNT = "123456789012"            # moto's default account
REGION = "us-east-1"
TEST_KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# A role any service principal may assume: moto does not evaluate trust policies, AWS would.
TRUST_POLICY = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
     "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]}]})


class MotoError(RuntimeError):
    """moto could not be started; the message carries its log tail."""


class MotoServer(ManagedServer):
    """One moto_server process.  Use as a context manager, or call start() and stop()."""

    def __init__(self, *, startup_timeout: float = 30.0, port: int = 0) -> None:
        self._server = ServerProcess("moto", MotoError, startup_timeout=startup_timeout)
        self.port = port                 # 0: a free one; a given port lets a test bring moto back where it was

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        binary = Path(sys.executable).parent / "moto_server"
        if not binary.exists():
            raise MotoError(f"{binary} is missing: install the test extra (pip install -e '.[test]')")
        # moto has no port 0: pick a free port; a lost race shows as an early exit below.
        self.port = self.port or free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["MOTO_RECORDER_FILEPATH"] = str(self._server.workdir / "recording.jsonl")
        self._server.start([str(binary), "-H", HOST, "-p", str(self.port)], env=env)
        with self._stopped_on_failure():
            self._server.wait_until(lambda: self._request("GET", "/moto-api/data.json"), "serving")

    # -- state --------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every role, table and session, and start a fresh recording."""
        self._request("POST", "/moto-api/reset")
        self._request("POST", "/moto-api/recorder/reset-recording")
        self._request("POST", "/moto-api/recorder/start-recording")

    def recorded_sts_calls(self, action: str = "AssumeRole") -> list[dict[str, str]]:
        """The form parameters of every STS call with this Action that moto received, in order."""
        calls = []
        for entry in self._recording():
            body = entry.get("body") or ""
            raw = base64.b64decode(body).decode() if entry.get("body_encoded") else body
            if entry.get("headers", {}).get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
                form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
                if form.get("Action") == action:
                    calls.append(form)
        return calls

    def clear_recording(self) -> None:
        """Forget the requests recorded so far (a test's own setup), keep recording."""
        self._request("POST", "/moto-api/recorder/reset-recording")
        self._request("POST", "/moto-api/recorder/start-recording")

    def recorded_targets(self) -> list[str]:
        """The X-Amz-Target of every JSON-protocol call (DynamoDB) moto received since the last reset."""
        targets = []
        for entry in self._recording():
            headers = {k.lower(): v for k, v in (entry.get("headers") or {}).items()}
            if "x-amz-target" in headers:
                targets.append(str(headers["x-amz-target"]))
        return targets

    def _recording(self) -> list[dict[str, Any]]:
        """Every request moto recorded since the last reset (recording goes on)."""
        self._request("POST", "/moto-api/recorder/stop-recording")
        try:
            text = self._request("GET", "/moto-api/recorder/download-recording").decode()
        finally:
            self._request("POST", "/moto-api/recorder/start-recording")
        return [json.loads(line) for line in text.splitlines()]

    def client(self, service: str, **keys: str) -> Any:
        session = boto3.session.Session(**(keys or TEST_KEYS), region_name=REGION)
        return session.client(service, endpoint_url=self.url, config=BotoConfig(retries={"total_max_attempts": 1}))

    def create_role(self, name: str, *, trusted: str | None = None) -> str:
        """A role that the account (or only the principal ARN `trusted`) may assume."""
        trust = TRUST_POLICY if trusted is None else TRUST_POLICY.replace(f"arn:aws:iam::{ACCOUNT}:root", trusted)
        role = self.client("iam").create_role(RoleName=name, AssumeRolePolicyDocument=trust)
        return str(role["Role"]["Arn"])

    def create_table(self, name: str, *, sort_key: bool = True) -> None:
        keys = [("pk", "HASH"), *([("sk", "RANGE")] if sort_key else [])]
        self.client("dynamodb").create_table(
            TableName=name, BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": n, "KeyType": t} for n, t in keys],
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n, _ in keys])

    @contextmanager
    def checking_signatures(self) -> Iterator[None]:
        """moto verifies every request's SigV4 signature and its IAM policies while this lasts (its
        `reset-auth`): what reaches it unsigned, or signed with a wrong key, is refused."""
        answer = json.loads(self._request("POST", "/moto-api/reset-auth", b"0"))
        try:
            yield
        finally:
            self._request("POST", "/moto-api/reset-auth", answer["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"].encode())

    def _request(self, method: str, path: str, data: bytes = b"") -> bytes:
        # text/plain: werkzeug would parse a form body away from what moto reads.
        request = urllib.request.Request(self.url + path, data=data if method == "POST" else None, method=method,
                                         headers={"Content-Type": "text/plain"})
        try:
            with _OPENER.open(request, timeout=10) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as exc:
            raise MotoError(f"{method} {path}: HTTP {exc.code}") from exc


def sts_client_factory(**keys: str) -> Any:
    """An StsClientFactory for idgate: the production client settings, with moto's test keys (or `keys`)."""
    from proxy.aws.sts import boto3_sts_client

    session = boto3.session.Session(**(keys or TEST_KEYS))

    def factory(config: Any) -> Any:
        return boto3_sts_client(config, session=session)

    return factory
