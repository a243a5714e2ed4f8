"""STS through boto3, off the event loop: AssumeRole (or AssumeRoleWithWebIdentity) with a session policy,
and every botocore error translated here into idgate's: 503 for what may pass, 403 for what will not.

The STS client is injected (a factory taking the AWS config), so tests point it at moto or a fake STS.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from proxy.aws.credentials import AwsCredentials
from proxy.aws.naming import SessionIdentity
from proxy.config import AwsConfig
from proxy.core.errors import AccessDenied, DependencyError, IdgateError
from proxy.core.reasons import Reason

log = logging.getLogger("idgate.aws.sts")

STS_THREADS = 16   # concurrent STS calls; also botocore's connection pool size


class StsClient(Protocol):
    """The two botocore STS client methods idgate uses."""

    def assume_role(self, **kwargs: Any) -> Mapping[str, Any]: ...
    def assume_role_with_web_identity(self, **kwargs: Any) -> Mapping[str, Any]: ...


StsClientFactory = Callable[[AwsConfig], StsClient]


def boto3_sts_client(config: AwsConfig, *, session: boto3.session.Session | None = None) -> StsClient:
    """A botocore STS client with idgate's base credentials from `session` (default: the usual chain:
    environment, instance role...).  No botocore retries: the broker backs off itself, so single flight
    sees every attempt."""
    session = session or boto3.session.Session()
    client: StsClient = session.client(
        "sts", region_name=config.region, endpoint_url=config.sts_endpoint,
        config=BotoConfig(connect_timeout=config.sts_timeout, read_timeout=config.sts_timeout,
                          retries={"total_max_attempts": 1}, max_pool_connections=STS_THREADS,
                          user_agent_extra="idgate-broker"))
    return client


class StsThrottled(DependencyError):
    """STS said slow down: the broker retries these with jittered backoff before giving up."""


@dataclass(frozen=True, slots=True)
class AssumeRequest:
    role_arn: str
    policy: str
    duration: int
    who: SessionIdentity
    # Set: AssumeRoleWithWebIdentity with the caller's token (never in a repr).
    web_identity_token: str | None = field(default=None, repr=False)


_THROTTLED = frozenset({"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
                        "RequestThrottled", "RequestThrottledException", "SlowDown"})
_BASE_CREDENTIALS = frozenset({"ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId",
                               "UnrecognizedClientException", "SignatureDoesNotMatch", "IncompleteSignature",
                               "MissingAuthenticationToken", "InvalidAccessKeyId"})
_WEB_IDENTITY_REJECTED = frozenset({"InvalidIdentityToken", "IDPRejectedClaim", "ExpiredTokenException",
                                    "ExpiredToken"})


def translate_client_error(exc: ClientError, *, web_identity: bool) -> IdgateError:
    """An STS error answer → idgate error.  Messages are fixed strings: STS's own text names ARNs."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in _THROTTLED:
        return StsThrottled("STS is throttling idgate; retry shortly", reason=Reason.STS_THROTTLED)
    if web_identity and code in _WEB_IDENTITY_REJECTED:
        return AccessDenied("STS refused the caller's token for this role", reason=Reason.WEB_IDENTITY_REJECTED)
    if code in _BASE_CREDENTIALS:
        return DependencyError("idgate's own AWS credentials are expired or invalid", reason=Reason.STS_BASE_CREDENTIALS)
    if code in ("AccessDenied", "AccessDeniedException"):
        return AccessDenied("STS does not let idgate assume this role", reason=Reason.STS_ACCESS_DENIED)
    if code == "PackedPolicyTooLarge":
        return AccessDenied("STS found the session policy and tags too large", reason=Reason.SESSION_POLICY_TOO_LARGE)
    if code == "MalformedPolicyDocument":
        return AccessDenied("STS rejected the session policy", reason=Reason.SESSION_POLICY_REJECTED)
    if code == "ValidationError":
        return AccessDenied("STS rejected the request (e.g. a duration above the role's maximum)",
                            reason=Reason.STS_REJECTED_REQUEST)
    if code in ("RegionDisabledException", "IDPCommunicationError") or status >= 500 or not code:
        return DependencyError("STS is unavailable", reason=Reason.STS_UNAVAILABLE)
    return DependencyError("STS refused the request", reason=Reason.STS_ERROR)


def translate_botocore_error(exc: BotoCoreError) -> IdgateError:
    if isinstance(exc, (ConnectTimeoutError, ReadTimeoutError)):
        return DependencyError("STS did not answer in time", reason=Reason.STS_TIMEOUT)
    if isinstance(exc, (EndpointConnectionError, HTTPClientError)):
        return DependencyError("STS is unreachable", reason=Reason.STS_UNREACHABLE)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return DependencyError("idgate has no AWS credentials to call STS with", reason=Reason.STS_BASE_CREDENTIALS)
    return DependencyError("the STS call failed", reason=Reason.STS_ERROR)


def credentials_from_response(response: Mapping[str, Any]) -> AwsCredentials:
    """Check STS's answer has the four fields, typed as documented; DependencyError otherwise."""
    creds = response.get("Credentials")
    if not isinstance(creds, Mapping):
        raise DependencyError("STS answered without credentials", reason=Reason.STS_BAD_ANSWER)
    fields = [creds.get(name) for name in ("AccessKeyId", "SecretAccessKey", "SessionToken")]
    expiration = creds.get("Expiration")
    if not all(isinstance(f, str) and f for f in fields) or not isinstance(expiration, datetime):
        raise DependencyError("STS answered with incomplete credentials", reason=Reason.STS_BAD_ANSWER)
    if expiration.tzinfo is None:
        raise DependencyError("STS answered with an expiry without a time zone", reason=Reason.STS_BAD_ANSWER)
    key, secret, token = (str(f) for f in fields)
    return AwsCredentials(key, secret, token, expiration.timestamp())


class Sts:
    """Runs STS calls on a dedicated thread pool, so slow STS answers never stall the event loop or
    the default executor other services share."""

    def __init__(self, client: StsClient, executor: Executor) -> None:
        self._client = client
        self._executor = executor

    async def assume(self, request: AssumeRequest) -> AwsCredentials:
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(self._executor, self._call, request)
        return credentials_from_response(response)

    def _call(self, request: AssumeRequest) -> Mapping[str, Any]:
        web_identity = request.web_identity_token is not None
        started = time.perf_counter()
        try:
            if request.web_identity_token is not None:
                # The trust policy decides on the token's claims; STS takes no tags or SourceIdentity here.
                return self._client.assume_role_with_web_identity(
                    RoleArn=request.role_arn, RoleSessionName=request.who.session_name,
                    WebIdentityToken=request.web_identity_token, Policy=request.policy,
                    DurationSeconds=request.duration)
            kwargs: dict[str, Any] = {
                "RoleArn": request.role_arn, "RoleSessionName": request.who.session_name,
                "SourceIdentity": request.who.source_identity, "Policy": request.policy,
                "DurationSeconds": request.duration,
            }
            if request.who.tags:
                kwargs["Tags"] = [{"Key": k, "Value": v} for k, v in request.who.tags]
            return self._client.assume_role(**kwargs)
        except ClientError as exc:
            err = translate_client_error(exc, web_identity=web_identity)
            log.warning("STS refused AssumeRole", extra={
                "role_arn": request.role_arn, "code": exc.response.get("Error", {}).get("Code"),
                "reason": err.reason, "seconds": round(time.perf_counter() - started, 3)})
            raise err from exc
        except BotoCoreError as exc:
            err = translate_botocore_error(exc)
            log.warning("STS call failed", extra={"role_arn": request.role_arn, "error": type(exc).__name__,
                                                  "reason": err.reason})
            raise err from exc
