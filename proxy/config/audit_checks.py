"""The `audit:` section's checks: segments and retention, the writer's instance id, and shipping
(sinks, anchors, intervals), plus the environment overrides that belong to the audit."""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from proxy.config.checks import AWS_REGION, check_positive, http_url_problem
from proxy.config.decoder import Spot, readable_file_problem
from proxy.config.schema import (
    ENV_ANCHOR_KEY_FILE, ENV_AUDIT_INSTANCE, ENV_AUDIT_PATH, AnchorConfig, AuditConfig, CloudWatchSinkConfig,
    ObjectLockConfig, S3SinkConfig, ShippingConfig,
)
from proxy.core.errors import ConfigProblem

# A stream name, an S3 folder and part of a file name: `<instance>.anchors` must stay a valid stream name.
INSTANCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_LOG_GROUP = re.compile(r"[A-Za-z0-9._/#-]{1,512}")
# S3's rules for new buckets: lower case, digits, dots and hyphens, 3-63, no IP-address look-alikes.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_LIKE = re.compile(r"\d+\.\d+\.\d+\.\d+")
_LOCK_MODES = ("COMPLIANCE", "GOVERNANCE")
ANCHORS = "anchors"
MAX_LOCK_DAYS = 36500


def _check_audit(audit: AuditConfig, spot: Spot) -> AuditConfig:
    check_positive(audit, spot, "rotate_bytes", "max_segments", "max_bytes")
    if audit.max_bytes is not None and 0 < audit.max_bytes < audit.rotate_bytes:
        # Each rotated segment is a little over rotate_bytes: every one would be deleted as it is rotated.
        spot.report(f"must be at least rotate_bytes ({audit.rotate_bytes}): a smaller budget cannot keep even "
                    "one rotated segment", "max_bytes")
    if not 0 <= audit.group_commit_max_delay <= 1:
        spot.report("must be between 0 and 1 second", "group_commit_max_delay")
    if audit.rotate_seconds is not None and audit.rotate_seconds < 1:
        spot.report("must be at least 1 second", "rotate_seconds")
    if audit.instance is not None and (why := instance_problem(audit.instance)):
        spot.report(why, "instance")
    return audit


def instance_problem(instance: str) -> str | None:
    if not INSTANCE.fullmatch(instance):
        return "must match [A-Za-z0-9][A-Za-z0-9._-]{0,99}"
    if instance == ANCHORS or instance.endswith("." + ANCHORS):
        # The anchors live in the stream <instance>.anchors and the S3 folder <instance>/anchors/.
        return f"must not be '{ANCHORS}' or end with '.{ANCHORS}': those names hold the signed anchors"
    return None


def _check_shipping(shipping: ShippingConfig, spot: Spot) -> ShippingConfig:
    if shipping.cloudwatch is None and shipping.s3 is None:
        spot.report("needs a sink: cloudwatch, s3 or both")
    if shipping.region is not None and not AWS_REGION.fullmatch(shipping.region):
        spot.report(f"'{shipping.region}' is not an AWS region name (e.g. us-east-1)", "region")
    if not 0 < shipping.interval <= 60:
        spot.report("must be greater than 0 and at most 60 seconds", "interval")
    if not 0 < shipping.timeout <= 300:
        spot.report("must be greater than 0 and at most 300 seconds", "timeout")
    check_positive(shipping, spot, "max_lag_seconds")
    return shipping


def _check_endpoint(sink: Any, spot: Spot) -> None:
    if sink.endpoint is not None and (why := http_url_problem(sink.endpoint, bare=True)):
        spot.report(why, "endpoint")


def _check_cloudwatch(cloudwatch: CloudWatchSinkConfig, spot: Spot) -> CloudWatchSinkConfig:
    if not _LOG_GROUP.fullmatch(cloudwatch.log_group):
        spot.report("must be 1-512 of A-Z a-z 0-9 . _ / # -", "log_group")
    _check_endpoint(cloudwatch, spot)
    return cloudwatch


def _check_s3(s3: S3SinkConfig, spot: Spot) -> S3SinkConfig:
    if not _BUCKET.fullmatch(s3.bucket) or ".." in s3.bucket or _IP_LIKE.fullmatch(s3.bucket):
        spot.report("is not an S3 bucket name (3-63 lower-case letters, digits, '.' and '-')", "bucket")
    if s3.prefix.startswith("/") or "//" in s3.prefix or len(s3.prefix) > 512 or \
            any(part in (".", "..", ANCHORS) for part in s3.prefix.split("/")):
        spot.report(f"must be a relative key prefix (e.g. 'audit/'): no leading '/', '//', '.', '..' or "
                    f"'{ANCHORS}' part", "prefix")
    _check_endpoint(s3, spot)
    return s3


def _check_object_lock(lock: ObjectLockConfig, spot: Spot) -> ObjectLockConfig:
    if lock.mode not in _LOCK_MODES:
        spot.report(f"must be {' or '.join(_LOCK_MODES)}", "mode")
    if not 1 <= lock.days <= MAX_LOCK_DAYS:
        spot.report(f"must be between 1 and {MAX_LOCK_DAYS}", "days")
    return lock


def _check_anchors(anchors: AnchorConfig, spot: Spot) -> AnchorConfig:
    if not 1 <= anchors.interval <= 86400:
        spot.report("must be between 1 and 86400 seconds", "interval")
    return anchors


AUDIT_VALIDATORS: Mapping[type, Any] = {
    AuditConfig: _check_audit, ShippingConfig: _check_shipping, CloudWatchSinkConfig: _check_cloudwatch,
    S3SinkConfig: _check_s3, ObjectLockConfig: _check_object_lock, AnchorConfig: _check_anchors,
}


def default_instance() -> str:
    """The host name, cut to what INSTANCE allows (a pod's name in Kubernetes: unique per pod)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).lstrip("._-")[:100]
    return name or "idgate"


def apply_audit_environment(audit: AuditConfig, env: Mapping[str, str]) -> AuditConfig:
    """$IDGATE_AUDIT_PATH, $IDGATE_AUDIT_INSTANCE and $IDGATE_ANCHOR_KEY_FILE win over the file; the
    instance falls back to the host name, so every record names its writer."""
    if audit_path := env.get(ENV_AUDIT_PATH):
        audit = replace(audit, path=Path(audit_path))
    audit = replace(audit, instance=env.get(ENV_AUDIT_INSTANCE) or audit.instance or default_instance())
    shipping = audit.shipping
    if shipping is not None and (key_file := env.get(ENV_ANCHOR_KEY_FILE)):
        audit = replace(audit, shipping=replace(shipping, anchors=replace(shipping.anchors, key_file=Path(key_file))))
    return audit


def check_audit_files(audit: AuditConfig, spot: Spot, env: Mapping[str, str], problems: list[ConfigProblem]) -> None:
    """After the environment: the instance it may have set, and the anchor key shipping needs."""
    if env.get(ENV_AUDIT_INSTANCE) and (why := instance_problem(audit.instance or "")):
        problems.append(ConfigProblem(f"${ENV_AUDIT_INSTANCE}", None, why))
    shipping = audit.shipping
    if shipping is None:
        return
    key_file = shipping.anchors.key_file
    if key_file is None:
        # Without signed anchors a cut-off tail goes unnoticed: shipping never runs without them.
        spot.child("shipping").report(f"shipping needs key_file (an EC P-256 private key; `idgate audit "
                                      f"anchor-key` makes one) or ${ENV_ANCHOR_KEY_FILE}", "anchors")
    elif not env.get(ENV_ANCHOR_KEY_FILE):
        spot.child("shipping").child("anchors").report_unreadable(key_file, "key_file")
    elif not spot.decoder.offline and (why := readable_file_problem(key_file)):
        problems.append(ConfigProblem(f"${ENV_ANCHOR_KEY_FILE}", None, f"{key_file}: {why}"))
