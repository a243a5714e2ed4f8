"""The shipper's AWS clients, built from audit.shipping on idgate's own credentials (boto3's usual chain:
environment, profile, instance or pod role), never a caller's.  Blocking: runs on the shipper's thread."""

from __future__ import annotations

import time
from dataclasses import dataclass

import boto3
from botocore.config import Config as BotoConfig
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import BotoCoreError

from proxy.audit.aws_json import AwsJsonApi, ShipError
from proxy.audit.cloudwatch import CloudWatchSink
from proxy.audit.s3_sink import S3Sink
from proxy.config import AuditConfig

LOGS_TARGET_PREFIX = "Logs_20140328"


@dataclass(frozen=True, slots=True)
class Sinks:
    cloudwatch: CloudWatchSink | None
    s3: S3Sink | None


def build_sinks(config: AuditConfig, region: str) -> Sinks:
    shipping = config.shipping
    assert shipping is not None and config.instance is not None
    try:
        session = boto3.session.Session(region_name=shipping.region or region)
        # One attempt per call: the shipper backs off and retries itself, from its checkpoint.
        options = BotoConfig(connect_timeout=shipping.timeout, read_timeout=shipping.timeout,
                             retries={"total_max_attempts": 1})
        cloudwatch = s3 = None
        if shipping.cloudwatch is not None:
            client = session.client("logs", endpoint_url=shipping.cloudwatch.endpoint, config=options)

            def credentials() -> ReadOnlyCredentials | None:
                found = session.get_credentials()
                return found.get_frozen_credentials() if found is not None else None

            api = AwsJsonApi(service="logs", target_prefix=LOGS_TARGET_PREFIX, endpoint_url=client.meta.endpoint_url,
                             region=client.meta.region_name, credentials=credentials, timeout=shipping.timeout)
            cloudwatch = CloudWatchSink(api, shipping.cloudwatch.log_group, config.instance,
                                        create=shipping.cloudwatch.create)
        if shipping.s3 is not None:
            client = session.client("s3", endpoint_url=shipping.s3.endpoint, config=options)
            s3 = S3Sink(client, shipping.s3.bucket, shipping.s3.prefix, config.instance, shipping.s3.object_lock,
                        time.time)
    except BotoCoreError as exc:
        raise ShipError("ClientError", f"cannot build the AWS clients for audit shipping: {exc}") from exc
    return Sinks(cloudwatch, s3)
