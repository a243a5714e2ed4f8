"""Audit shipping against a real moto server (CloudWatch Logs and S3): the audit section that points
idgate's shipper at it, idgate's own AWS credentials in the environment (boto3's usual chain, as in
production), and readers of what arrived in the log streams and the bucket."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxy.audit.chain import ChainState, SealedBatch, unsealed
from proxy.audit.sink import rotated_path
from proxy.keys import new_private_key_pem
from tests.harness.moto import REGION, TEST_KEYS, MotoServer

LOG_GROUP = "/idgate/audit"
BUCKET = "idgate-audit"
PREFIX = "audit/"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """idgate's own credentials (moto's test keys) on boto3's usual chain, and nothing else of the runner's."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS",
                 "AWS_ENDPOINT_URL_S3", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_KEYS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_KEYS["aws_secret_access_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def write_rotated_segment(audit_path: Path, count: int, epoch: float, *, instance: str = "node-1") -> Path:
    """A rotated segment of `count` records from the genesis, named as the audit log names it, written
    before idgate starts (so a test knows its S3 key, or gives it timestamps of its choosing)."""
    batch = SealedBatch(ChainState(), epoch)
    for i in range(count):
        batch.add(unsealed({"event": "decision", "i": i}, instance))
    path = rotated_path(audit_path, epoch, count)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(batch.data())
    return path


def prewrite_chain(audit_path: Path, count: int, record: Callable[[int], dict[str, Any]], *,
                   instance: str = "node-1") -> None:
    """A live segment of `count` records `record(i)` from the genesis, written before idgate starts."""
    audit_path.parent.mkdir(parents=True, exist_ok=True)
    state = ChainState()
    with audit_path.open("wb") as f:
        for start in range(0, count, 1000):
            batch = SealedBatch(state, time.time())
            for i in range(start, min(count, start + 1000)):
                batch.add(unsealed(record(i), instance))
            f.write(batch.data())
            state = batch.state


def write_anchor_key(directory: Path) -> Path:
    path = directory / "anchor-key.pem"
    path.write_bytes(new_private_key_pem())
    path.chmod(0o600)
    return path


@dataclass
class ShippingTarget:
    moto: MotoServer
    anchor_key: Path

    def audit_section(self, audit_path: Path, *, cloudwatch: bool = True, s3: bool = True,
                      object_lock: dict[str, Any] | None = None, **shipping: Any) -> dict[str, Any]:
        """The `audit:` section of an idgate.yaml that ships to this moto; `shipping` adds or overrides keys."""
        section: dict[str, Any] = {"anchors": {"key_file": str(self.anchor_key), "interval": 1}, "interval": 0.05,
                                   **shipping}
        if cloudwatch:
            section["cloudwatch"] = {"log_group": LOG_GROUP, "endpoint": self.moto.url}
        if s3:
            section["s3"] = {"bucket": BUCKET, "prefix": PREFIX, "endpoint": self.moto.url,
                             **({"object_lock": object_lock} if object_lock else {})}
        return {"path": str(audit_path), "instance": "node-1", "shipping": section}

    def create_bucket(self, *, object_lock: bool = False) -> None:
        self.moto.client("s3").create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=object_lock)

    def messages(self, stream: str) -> list[str]:
        """Every event's message in a stream, oldest first (all pages); none before the shipper created it."""
        logs = self.moto.client("logs")
        out: list[str] = []
        token: str | None = None
        while True:
            try:
                page = logs.get_log_events(logGroupName=LOG_GROUP, logStreamName=stream, startFromHead=True,
                                           **({"nextToken": token} if token else {}))
            except logs.exceptions.ResourceNotFoundException:
                return []
            out.extend(event["message"] for event in page["events"])
            # Only a repeated token ends a stream: AWS may answer an empty page before the end.
            if page.get("nextForwardToken") in (None, token):
                return out
            token = page["nextForwardToken"]

    def records(self, stream: str = "node-1") -> list[dict[str, Any]]:
        return [json.loads(message) for message in self.messages(stream)]

    def keys(self, prefix: str = PREFIX) -> list[str]:
        pages = self.moto.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def object(self, key: str) -> bytes:
        body: bytes = self.moto.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()
        return body


@pytest.fixture
def shipping_target(moto: MotoServer, aws_env: None, tmp_path: Path) -> Iterator[ShippingTarget]:
    yield ShippingTarget(moto, write_anchor_key(tmp_path))
