"""STS answers and botocore errors → idgate credentials and errors: each error code lands on a clear
403 or 503 with a fixed message (STS's own text names ARNs), and a malformed answer is never vended."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from proxy.aws.naming import session_identity
from proxy.aws.sts import (
    AssumeRequest,
    Sts,
    StsThrottled,
    credentials_from_response,
    translate_botocore_error,
    translate_client_error,
)
from proxy.core.errors import AccessDenied, DependencyError, IdgateError


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "User arn:aws:iam::1:user/x is not authorized"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "AssumeRole")


@pytest.mark.parametrize(("code", "status", "web", "kind", "reason"), [
    ("Throttling", 400, False, StsThrottled, "sts_throttled"),
    ("RequestLimitExceeded", 400, False, StsThrottled, "sts_throttled"),
    ("AccessDenied", 403, False, AccessDenied, "sts_access_denied"),
    ("ExpiredToken", 400, False, DependencyError, "sts_base_credentials"),
    ("InvalidClientTokenId", 403, False, DependencyError, "sts_base_credentials"),
    ("ExpiredTokenException", 400, True, AccessDenied, "web_identity_rejected"),
    ("InvalidIdentityToken", 400, True, AccessDenied, "web_identity_rejected"),
    ("IDPCommunicationError", 400, True, DependencyError, "sts_unavailable"),
    ("PackedPolicyTooLarge", 400, False, AccessDenied, "session_policy_too_large"),
    ("MalformedPolicyDocument", 400, False, AccessDenied, "session_policy_rejected"),
    ("ValidationError", 400, False, AccessDenied, "sts_rejected_request"),
    ("RegionDisabledException", 403, False, DependencyError, "sts_unavailable"),
    ("InternalFailure", 500, False, DependencyError, "sts_unavailable"),
    ("SomethingNew", 400, False, DependencyError, "sts_error"),
])
def test_sts_error_codes(code: str, status: int, web: bool, kind: type[IdgateError], reason: str) -> None:
    err = translate_client_error(client_error(code, status), web_identity=web)
    assert type(err) is kind and err.reason == reason
    assert "arn:" not in err.message


@pytest.mark.parametrize(("exc", "reason"), [
    (ReadTimeoutError(endpoint_url="http://sts"), "sts_timeout"),
    (ConnectTimeoutError(endpoint_url="http://sts"), "sts_timeout"),
    (EndpointConnectionError(endpoint_url="http://sts"), "sts_unreachable"),
    (NoCredentialsError(), "sts_base_credentials"),
])
def test_botocore_errors_are_503(exc: Exception, reason: str) -> None:
    err = translate_botocore_error(exc)  # type: ignore[arg-type]
    assert err.status == 503 and err.reason == reason


def test_credentials_from_a_well_formed_answer() -> None:
    expiry = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    creds = credentials_from_response({"Credentials": {
        "AccessKeyId": "ASIA1", "SecretAccessKey": "s", "SessionToken": "t", "Expiration": expiry}})
    assert (creds.access_key_id, creds.expiration, creds.expiration_iso()) == (
        "ASIA1", expiry.timestamp(), "2030-01-01T12:00:00Z")


@pytest.mark.parametrize("credentials", [
    None,
    {"AccessKeyId": "ASIA1", "SecretAccessKey": "s", "Expiration": datetime.now(UTC)},
    {"AccessKeyId": "", "SecretAccessKey": "s", "SessionToken": "t", "Expiration": datetime.now(UTC)},
    {"AccessKeyId": "ASIA1", "SecretAccessKey": "s", "SessionToken": "t", "Expiration": "2030-01-01"},
    {"AccessKeyId": "ASIA1", "SecretAccessKey": "s", "SessionToken": "t", "Expiration": datetime(2030, 1, 1)},
])
def test_malformed_answers_are_refused(credentials: Any) -> None:
    with pytest.raises(DependencyError) as caught:
        credentials_from_response({} if credentials is None else {"Credentials": credentials})
    assert caught.value.reason == "sts_bad_answer"


class RecordingClient:
    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.error = error

    def _answer(self, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((name, kwargs))
        if self.error:
            raise self.error
        return {"Credentials": {"AccessKeyId": "ASIA1", "SecretAccessKey": "s", "SessionToken": "t",
                                "Expiration": datetime.now(UTC) + timedelta(hours=1)}}

    def assume_role(self, **kwargs: Any) -> dict[str, Any]:
        return self._answer("assume_role", kwargs)

    def assume_role_with_web_identity(self, **kwargs: Any) -> dict[str, Any]:
        return self._answer("assume_role_with_web_identity", kwargs)


async def test_assume_role_sends_policy_names_and_tags_from_a_worker_thread() -> None:
    client = RecordingClient()
    who = session_identity("https://issuer", "svc-etl-7", tags=True)
    with ThreadPoolExecutor(1) as pool:
        await Sts(client, pool).assume(AssumeRequest("arn:aws:iam::123456789012:role/etl", '{"p":1}', 3600, who))
    name, kwargs = client.calls[0]
    assert name == "assume_role"
    assert kwargs == {"RoleArn": "arn:aws:iam::123456789012:role/etl", "RoleSessionName": who.session_name,
                      "SourceIdentity": who.session_name, "Policy": '{"p":1}', "DurationSeconds": 3600,
                      "Tags": [{"Key": "idgate:issuer", "Value": "https://issuer"},
                               {"Key": "idgate:subject", "Value": "svc-etl-7"}]}


async def test_web_identity_passes_the_token_and_no_tags() -> None:
    client = RecordingClient()
    who = session_identity("https://issuer", "svc", tags=True)
    with ThreadPoolExecutor(1) as pool:
        await Sts(client, pool).assume(AssumeRequest("arn:aws:iam::1:role/r", "{}", 3600, who, "a.b.c"))
    name, kwargs = client.calls[0]
    assert name == "assume_role_with_web_identity"
    assert kwargs["WebIdentityToken"] == "a.b.c" and "Tags" not in kwargs and "SourceIdentity" not in kwargs


async def test_errors_raised_in_the_thread_arrive_translated() -> None:
    client = RecordingClient(client_error("AccessDenied", 403))
    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(AccessDenied) as caught:
            await Sts(client, pool).assume(AssumeRequest("arn:aws:iam::1:role/r", "{}", 3600,
                                                         session_identity("i", "s", tags=False)))
    assert isinstance(caught.value.__cause__, ClientError)
