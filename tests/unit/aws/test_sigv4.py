"""The gateway's SigV4 checks against requests signed by real botocore (a dynamodb client whose request is
captured at `before-send`, so nothing goes on the wire): a genuine GetItem verifies, and each attack on
the signature, the scope, the clock, the headers, the body or the credentials is refused with its reason."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials

from proxy.aws.credentials import AwsCredentials
from proxy.aws.gateway_keys import KeyRing
from proxy.aws.gateway_tokens import GatewaySession, issue, open_session
from proxy.aws.sigv4 import (
    MAX_CLOCK_SKEW, REQUIRED_SIGNED_HEADERS, Credential, SignedRequest, check_payload_hash, check_signature,
    parse_signed, resign,
)
from proxy.core.errors import AuthenticationError
from tests.factories import make_gateway_session, make_key_ring

REGION, SERVICE = "us-east-1", "dynamodb"
ENDPOINT = "http://127.0.0.1:8080/.idgate/dynamodb"
GET_ITEM = {"TableName": "orders", "Key": {"pk": {"S": "acme#7"}}}


class _Body:
    """The raw response body botocore reads from a before-send answer."""

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield b"{}"


@functools.cache
def _client(access_key_id: str, secret: str, token: str | None, region: str) -> Any:
    session = boto3.session.Session(aws_access_key_id=access_key_id, aws_secret_access_key=secret,
                                    aws_session_token=token, region_name=region)
    return session.client("dynamodb", endpoint_url=ENDPOINT, config=BotoConfig(retries={"total_max_attempts": 1}))


def botocore_request(creds: AwsCredentials, *, region: str = REGION, token: bool = True,
                     operation: str = "get_item", params: dict[str, Any] | None = None) -> SignedRequest:
    """The request a real boto3 dynamodb client signs and would send, as idgate's server would see it
    (with the Host header that the HTTP client adds)."""
    client = _client(creds.access_key_id, creds.secret_access_key, creds.session_token if token else None, region)
    seen: list[Any] = []

    def before_send(request: Any, **_: Any) -> AWSResponse:
        seen.append(request)
        return AWSResponse(request.url, 200, {}, _Body())

    client.meta.events.register("before-send", before_send)
    try:
        getattr(client, operation)(**(params or GET_ITEM))
    finally:
        client.meta.events.unregister("before-send", before_send)
    (prepared,) = seen
    return from_prepared(prepared.method, prepared.url, prepared.headers.items(), prepared.body)


def from_prepared(method: str, url: str, headers: Any, body: bytes | None) -> SignedRequest:
    parts = urlsplit(url)
    text = [(str(k), v.decode() if isinstance(v, bytes) else str(v)) for k, v in headers]
    if not any(k.lower() == "host" for k, _ in text):
        text.insert(0, ("Host", parts.netloc))
    return SignedRequest(method=method, path=parts.path or "/", query=parts.query, headers=tuple(text),
                         body=body or b"")


def signed_at(request: SignedRequest) -> float:
    amz_date = header(request, "x-amz-date")
    return datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()


def header(request: SignedRequest, name: str) -> str:
    (value,) = [v for k, v in request.headers if k.lower() == name]
    return value


def replace_header(request: SignedRequest, name: str, value: str) -> SignedRequest:
    return dataclasses.replace(request, headers=tuple((k, value if k.lower() == name else v)
                                                      for k, v in request.headers))


def drop_header(request: SignedRequest, name: str) -> SignedRequest:
    return dataclasses.replace(request, headers=tuple((k, v) for k, v in request.headers if k.lower() != name))


def add_header(request: SignedRequest, name: str, value: str) -> SignedRequest:
    return dataclasses.replace(request, headers=(*request.headers, (name, value)))


def botocore_sign(request: SignedRequest, creds: AwsCredentials, *, region: str = REGION, service: str = SERVICE,
                  url: str = ENDPOINT, context: dict[str, Any] | None = None, query: bool = False,
                  extra: dict[str, str] | None = None) -> SignedRequest:
    """`request` signed afresh by botocore's own signer (for scopes and payload modes no dynamodb client
    makes: another service, UNSIGNED-PAYLOAD, presigned query auth)."""
    keep = {"content-type", "x-amz-target"}
    aws = AWSRequest(method="POST", url=url, data=request.body,
                     headers={**{k: v for k, v in request.headers if k.lower() in keep}, **(extra or {})})
    aws.context.update(context or {})
    signer = (SigV4QueryAuth if query else SigV4Auth)(
        Credentials(creds.access_key_id, creds.secret_access_key, creds.session_token), service, region)
    signer.add_auth(aws)
    prepared = aws.prepare()
    return from_prepared(prepared.method, prepared.url, prepared.headers.items(), prepared.body)


def verify(request: SignedRequest, ring: KeyRing, now: float | None = None) -> GatewaySession:
    """What the gateway does with a request: parse, open the credentials, check the signature."""
    now = signed_at(request) if now is None else now
    credential = parse_signed(request, region=REGION, service=SERVICE, now=now)
    session, secret = open_session(ring, credential.access_key_id, credential.security_token, now)
    check_payload_hash(request)
    check_signature(request, credential, secret)
    return session


def refused(request: SignedRequest, ring: KeyRing, reason: str, now: float | None = None) -> None:
    with pytest.raises(AuthenticationError) as caught:
        verify(request, ring, now)
    assert caught.value.reason == reason
    assert caught.value.status == 401


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return make_key_ring()


@pytest.fixture(scope="module")
def creds(ring: KeyRing) -> AwsCredentials:
    return issue(ring, make_gateway_session(lifetime=3600))


@pytest.fixture
def genuine(creds: AwsCredentials) -> SignedRequest:
    return botocore_request(creds)


# --- what verifies --------------------------------------------------------------------------------------

def test_a_genuine_get_item_verifies(genuine: SignedRequest, ring: KeyRing, creds: AwsCredentials) -> None:
    assert header(genuine, "x-amz-target") == "DynamoDB_20120810.GetItem"
    credential = parse_signed(genuine, region=REGION, service=SERVICE, now=signed_at(genuine))
    assert credential.access_key_id == creds.access_key_id and credential.security_token == creds.session_token
    assert credential.signed_headers == tuple(sorted(REQUIRED_SIGNED_HEADERS))
    assert credential.region == REGION and credential.service == SERVICE
    assert credential.date == credential.amz_date[:8] and creds.session_token not in repr(credential)
    assert verify(genuine, ring).subject == "svc-etl-7"


def test_other_operations_verify(ring: KeyRing, creds: AwsCredentials) -> None:
    put = botocore_request(creds, operation="put_item",
                           params={"TableName": "orders", "Item": {"pk": {"S": "acme#7"}, "n": {"N": "1"}}})
    query = botocore_request(creds, operation="query", params={
        "TableName": "orders", "KeyConditionExpression": "pk = :p",
        "ExpressionAttributeValues": {":p": {"S": "acme#7"}}})
    assert verify(put, ring) and verify(query, ring)


def test_the_skew_limit_is_inclusive(genuine: SignedRequest, ring: KeyRing) -> None:
    verify(genuine, ring, now=signed_at(genuine) + MAX_CLOCK_SKEW)
    verify(genuine, ring, now=signed_at(genuine) - MAX_CLOCK_SKEW)


def test_a_correct_signed_content_hash_is_accepted(genuine: SignedRequest, ring: KeyRing,
                                                   creds: AwsCredentials) -> None:
    digest = hashlib.sha256(genuine.body).hexdigest()
    request = botocore_sign(genuine, creds, extra={"X-Amz-Content-SHA256": digest})
    assert "x-amz-content-sha256" in parse_signed(request, region=REGION, service=SERVICE,
                                                  now=signed_at(request)).signed_headers
    verify(request, ring)


def test_unsigned_headers_may_change(genuine: SignedRequest, ring: KeyRing) -> None:
    verify(replace_header(genuine, "user-agent", "something-else/1.0"), ring)


def test_check_signature_matches_the_aws_test_suite_get_vanilla() -> None:
    """AWS's published SigV4 test vector (aws-sig-v4-test-suite get-vanilla): the signature check agrees
    with AWS itself, not only with the botocore it is built on."""
    request = SignedRequest("GET", "/", "", (("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z")),
                            b"")
    credential = Credential("AKIDEXAMPLE", "20150830", "us-east-1", "service", ("host", "x-amz-date"),
                            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31", "20150830T123600Z", "")
    check_signature(request, credential, "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    with pytest.raises(AuthenticationError):
        check_signature(request, credential, "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEz")


# --- tampering: the signature no longer matches ---------------------------------------------------------

def test_a_tampered_signature_is_refused(genuine: SignedRequest, ring: KeyRing) -> None:
    auth = header(genuine, "authorization")
    last = auth[-1]
    refused(replace_header(genuine, "authorization", auth[:-1] + ("0" if last != "0" else "1")), ring,
            "signature_mismatch")


def test_a_tampered_body_is_refused(genuine: SignedRequest, ring: KeyRing) -> None:
    refused(dataclasses.replace(genuine, body=genuine.body.replace(b"acme#7", b"acme#8")), ring, "signature_mismatch")


def test_a_tampered_target_header_is_refused(genuine: SignedRequest, ring: KeyRing) -> None:
    refused(replace_header(genuine, "x-amz-target", "DynamoDB_20120810.DeleteItem"), ring, "signature_mismatch")


def test_a_changed_host_is_refused(genuine: SignedRequest, ring: KeyRing) -> None:
    refused(replace_header(genuine, "host", "127.0.0.1:8081"), ring, "signature_mismatch")


def test_a_changed_method_path_or_query_is_refused(genuine: SignedRequest, ring: KeyRing) -> None:
    refused(dataclasses.replace(genuine, method="PUT"), ring, "signature_mismatch")
    refused(dataclasses.replace(genuine, path="/"), ring, "signature_mismatch")
    refused(dataclasses.replace(genuine, query="TableName=other"), ring, "signature_mismatch")


@pytest.mark.parametrize("path", ["/x/../.idgate/dynamodb", "/.idgate/./dynamodb", "//.idgate/dynamodb",
                                  "/.idgate//dynamodb"])
def test_another_spelling_of_the_signed_path_is_refused(genuine: SignedRequest, ring: KeyRing, path: str) -> None:
    """botocore's canonical path drops dot segments and repeated slashes, so these carry the genuine
    signature; the gateway refuses them rather than let a signature vouch for a path it did not cover."""
    refused(dataclasses.replace(genuine, path=path), ring, "signature_mismatch")


def test_check_signature_hashes_the_body_and_ignores_the_content_hash_header(
        genuine: SignedRequest, ring: KeyRing, creds: AwsCredentials) -> None:
    """botocore's own canonical request takes X-Amz-Content-SHA256 at its word; the gateway does not (even
    when parse_signed is skipped)."""
    request = botocore_sign(genuine, creds, extra={"X-Amz-Content-SHA256": hashlib.sha256(genuine.body).hexdigest()})
    credential = parse_signed(request, region=REGION, service=SERVICE, now=signed_at(request))
    tampered = dataclasses.replace(request, body=b'{"TableName": "secrets"}')
    with pytest.raises(AuthenticationError) as caught:
        check_signature(tampered, credential, creds.secret_access_key)
    assert caught.value.reason == "signature_mismatch"
    refused(tampered, ring, "payload_hash_mismatch")


# --- scope and clock ------------------------------------------------------------------------------------

def test_another_region_is_refused(ring: KeyRing, creds: AwsCredentials) -> None:
    refused(botocore_request(creds, region="eu-west-1"), ring, "wrong_signature_scope")


def test_another_service_is_refused(genuine: SignedRequest, ring: KeyRing, creds: AwsCredentials) -> None:
    request = botocore_sign(genuine, creds, service="sqs")
    assert "/sqs/aws4_request" in header(request, "authorization")
    refused(request, ring, "wrong_signature_scope")


def test_a_scope_date_other_than_x_amz_dates_is_refused(genuine: SignedRequest, ring: KeyRing) -> None:
    amz_date = header(genuine, "x-amz-date")
    day = datetime.strptime(amz_date[:8], "%Y%m%d").replace(tzinfo=UTC).timestamp() - 86400
    other = datetime.fromtimestamp(day, UTC).strftime("%Y%m%d") + amz_date[8:]
    refused(replace_header(genuine, "x-amz-date", other), ring, "wrong_signature_scope", now=signed_at(genuine))


@pytest.mark.parametrize("terminator", ["aws4_requesT", "aws5_request", ""])
def test_another_scope_terminator_is_refused(genuine: SignedRequest, ring: KeyRing, terminator: str) -> None:
    auth = header(genuine, "authorization").replace("/aws4_request,", f"/{terminator},")
    refused(replace_header(genuine, "authorization", auth), ring, "wrong_signature_scope")


def test_a_replay_after_the_skew_is_refused(genuine: SignedRequest, ring: KeyRing) -> None:
    refused(genuine, ring, "signature_expired", now=signed_at(genuine) + MAX_CLOCK_SKEW + 1)


def test_a_request_dated_in_the_future_beyond_the_skew_is_refused(genuine: SignedRequest, ring: KeyRing) -> None:
    refused(genuine, ring, "signature_expired", now=signed_at(genuine) - MAX_CLOCK_SKEW - 1)


# --- the Authorization header and X-Amz-Date ------------------------------------------------------------

def test_no_authorization_is_a_missing_signature(genuine: SignedRequest, ring: KeyRing) -> None:
    refused(drop_header(genuine, "authorization"), ring, "missing_signature")


@pytest.mark.parametrize("scheme", ["aws4-hmac-sha256 ", "Aws4-Hmac-Sha256 ", "AWS4-HMAC-SHA256\t", "AWS4-HMAC-SHA256",
                                    "AWS4-HMAC-SHA512 ", "AWS4-ECDSA-P256-SHA256 ", "Bearer ", " AWS4-HMAC-SHA256 "])
def test_another_spelling_of_the_scheme_is_refused(genuine: SignedRequest, ring: KeyRing, scheme: str) -> None:
    auth = header(genuine, "authorization").removeprefix("AWS4-HMAC-SHA256 ")
    refused(replace_header(genuine, "authorization", scheme + auth), ring, "missing_signature")


def _components(request: SignedRequest) -> dict[str, str]:
    rest = header(request, "authorization").removeprefix("AWS4-HMAC-SHA256 ")
    return dict(part.strip().split("=", 1) for part in rest.split(","))


@pytest.mark.parametrize("spoil", [
    pytest.param(lambda c: f"Credential={c['Credential']}, SignedHeaders={c['SignedHeaders']}", id="no-signature"),
    pytest.param(lambda c: f"SignedHeaders={c['SignedHeaders']}, Signature={c['Signature']}", id="no-credential"),
    pytest.param(lambda c: f"Credential={c['Credential']}, Signature={c['Signature']}", id="no-signed-headers"),
    pytest.param(lambda c: f"Credential={c['Credential']}, Credential={c['Credential']}, "
                           f"SignedHeaders={c['SignedHeaders']}, Signature={c['Signature']}", id="credential-twice"),
    pytest.param(lambda c: f"Credential={c['Credential']}, SignedHeaders={c['SignedHeaders']}, "
                           f"Signature={c['Signature']}, Signature={c['Signature']}", id="signature-twice"),
    pytest.param(lambda c: f"Credential={c['Credential']}, SignedHeaders={c['SignedHeaders']}, "
                           f"Signature={c['Signature']}, Extra=1", id="unknown-component"),
    pytest.param(lambda c: f"Credential={c['Credential']}, SignedHeaders={c['SignedHeaders']}, "
                           f"Signature={c['Signature'].upper()}", id="uppercase-signature"),
    pytest.param(lambda c: f"Credential={c['Credential']}, SignedHeaders={c['SignedHeaders']}, "
                           f"Signature={c['Signature'][:-1]}", id="short-signature"),
    pytest.param(lambda c: f"Credential={c['Credential']}, SignedHeaders={c['SignedHeaders']}, "
                           f"Signature=", id="empty-signature"),
    pytest.param(lambda c: f"Credential={c['Credential']}, SignedHeaders=host;content-type;x-amz-date;"
                           f"x-amz-security-token;x-amz-target, Signature={c['Signature']}", id="unsorted"),
    pytest.param(lambda c: f"Credential={c['Credential']}, SignedHeaders=content-type;Host;x-amz-date;"
                           f"x-amz-security-token;x-amz-target, Signature={c['Signature']}", id="uppercase-name"),
    pytest.param(lambda c: f"Credential={c['Credential']}, SignedHeaders=content-type;host;host;x-amz-date;"
                           f"x-amz-security-token;x-amz-target, Signature={c['Signature']}", id="duplicate-name"),
    pytest.param(lambda c: f"Credential={c['Credential']}, SignedHeaders=;content-type;host;x-amz-date;"
                           f"x-amz-security-token;x-amz-target, Signature={c['Signature']}", id="empty-name"),
    pytest.param(lambda c: f"Credential={c['Credential']}, SignedHeaders={c['SignedHeaders']};, "
                           f"Signature={c['Signature']}", id="trailing-separator"),
    pytest.param(lambda c: f"Credential={c['Credential'].rsplit('/', 1)[0]}, SignedHeaders={c['SignedHeaders']}, "
                           f"Signature={c['Signature']}", id="four-part-scope"),
    pytest.param(lambda c: f"Credential=x/{c['Credential']}, SignedHeaders={c['SignedHeaders']}, "
                           f"Signature={c['Signature']}", id="six-part-scope"),
    pytest.param(lambda c: f"Credential=short/{c['Credential'].split('/', 1)[1]}, "
                           f"SignedHeaders={c['SignedHeaders']}, Signature={c['Signature']}", id="short-access-key"),
    pytest.param(lambda c: f"Credential={c['Credential']}; SignedHeaders={c['SignedHeaders']}; "
                           f"Signature={c['Signature']}", id="semicolons"),
])
def test_a_malformed_authorization_is_refused(genuine: SignedRequest, ring: KeyRing, spoil: Any) -> None:
    auth = "AWS4-HMAC-SHA256 " + spoil(_components(genuine))
    refused(replace_header(genuine, "authorization", auth), ring, "malformed_signature")


def test_spaces_between_components_do_not_matter(genuine: SignedRequest, ring: KeyRing) -> None:
    c = _components(genuine)
    auth = f"AWS4-HMAC-SHA256 Credential={c['Credential']},SignedHeaders={c['SignedHeaders']},  Signature={c['Signature']}"
    verify(replace_header(genuine, "authorization", auth), ring)


@pytest.mark.parametrize("amz_date", ["2026-12-02T02:28:02Z", "20261202T022802", "20261302T022802Z",
                                      "20261202T256002Z", "20261202t022802z", "２０２６1202T022802Z", ""])
def test_a_malformed_x_amz_date_is_refused(genuine: SignedRequest, ring: KeyRing, amz_date: str) -> None:
    refused(replace_header(genuine, "x-amz-date", amz_date), ring, "malformed_signature", now=signed_at(genuine))


# --- headers: signed, present, once ---------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(REQUIRED_SIGNED_HEADERS))
def test_a_required_header_missing_from_the_request_is_refused(genuine: SignedRequest, ring: KeyRing,
                                                               name: str) -> None:
    refused(drop_header(genuine, name), ring, "unsigned_header", now=signed_at(genuine))


@pytest.mark.parametrize("name", sorted(REQUIRED_SIGNED_HEADERS))
def test_a_required_header_left_out_of_signed_headers_is_refused(genuine: SignedRequest, ring: KeyRing,
                                                                 name: str) -> None:
    c = _components(genuine)
    signed = ";".join(n for n in c["SignedHeaders"].split(";") if n != name)
    auth = f"AWS4-HMAC-SHA256 Credential={c['Credential']}, SignedHeaders={signed}, Signature={c['Signature']}"
    refused(replace_header(genuine, "authorization", auth), ring, "unsigned_header")


def test_credentials_without_a_session_token_are_refused(ring: KeyRing, creds: AwsCredentials) -> None:
    request = botocore_request(creds, token=False)
    assert not any(k.lower() == "x-amz-security-token" for k, _ in request.headers)
    refused(request, ring, "unsigned_header")


def test_a_signed_header_absent_from_the_request_is_refused(genuine: SignedRequest, ring: KeyRing,
                                                            creds: AwsCredentials) -> None:
    request = botocore_sign(genuine, creds, extra={"X-Amz-Meta": "1"})
    refused(drop_header(request, "x-amz-meta"), ring, "unsigned_header")


@pytest.mark.parametrize(("name", "value"), [
    ("X-Amz-Date", "20200101T000000Z"), ("x-amz-date", None), ("X-Amz-Target", "DynamoDB_20120810.DeleteItem"),
    ("X_Amz_Target", "DynamoDB_20120810.DeleteItem"), ("Host", "evil.example"), ("host", None),
    ("Authorization", "AWS4-HMAC-SHA256 Credential=x"), ("authorization", None),
    ("X-Amz-Security-Token", "other"), ("Content-Type", "text/plain"), ("X-Amz-Content-SHA256", None),
])
def test_a_duplicated_header_is_refused(genuine: SignedRequest, ring: KeyRing, name: str, value: str | None) -> None:
    if name.lower() == "x-amz-content-sha256":
        genuine = add_header(genuine, name, hashlib.sha256(genuine.body).hexdigest())
    copy = value if value is not None else header(genuine, name.lower().replace("_", "-"))
    refused(add_header(genuine, name, copy), ring, "duplicate_signed_header", now=signed_at(genuine))


def test_an_unsigned_header_may_repeat(genuine: SignedRequest, ring: KeyRing) -> None:
    verify(add_header(genuine, "Accept", "*/*"), ring)
    verify(add_header(add_header(genuine, "Accept", "a"), "Accept", "b"), ring)


# --- the payload hash -----------------------------------------------------------------------------------

def test_an_unsigned_payload_is_refused(genuine: SignedRequest, ring: KeyRing, creds: AwsCredentials) -> None:
    """A genuine botocore signature over UNSIGNED-PAYLOAD (https, payload signing off): valid, and refused."""
    request = botocore_sign(genuine, creds, url="https://127.0.0.1:8443/.idgate/dynamodb",
                            context={"payload_signing_enabled": False})
    assert header(request, "x-amz-content-sha256") == "UNSIGNED-PAYLOAD"
    refused(request, ring, "payload_hash_mismatch")


@pytest.mark.parametrize("value", ["STREAMING-UNSIGNED-PAYLOAD-TRAILER", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                                   "UNSIGNED-PAYLOAD", "0" * 64, "", "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"])
def test_a_wrong_content_hash_is_refused(genuine: SignedRequest, ring: KeyRing, value: str) -> None:
    refused(add_header(genuine, "X-Amz-Content-SHA256", value), ring, "payload_hash_mismatch")


def test_the_content_hash_of_another_body_is_refused(genuine: SignedRequest, ring: KeyRing) -> None:
    request = add_header(genuine, "X-Amz-Content-SHA256", hashlib.sha256(genuine.body).hexdigest())
    refused(dataclasses.replace(request, body=b"{}"), ring, "payload_hash_mismatch")


# --- query auth -----------------------------------------------------------------------------------------

def test_a_presigned_query_is_refused(genuine: SignedRequest, ring: KeyRing, creds: AwsCredentials) -> None:
    request = botocore_sign(genuine, creds, query=True)
    assert "X-Amz-Signature=" in request.query and not any(k.lower() == "authorization" for k, _ in request.headers)
    refused(request, ring, "malformed_signature", now=datetime.now(UTC).timestamp())


@pytest.mark.parametrize("query", ["X-Amz-Signature=" + "0" * 64, "X-Amz-Credential=x", "X-Amz-Algorithm=AWS4-HMAC-SHA256",
                                   "a=1&x-amz-signature=0", "X%2DAmz-Signature=0"])
def test_query_auth_beside_header_auth_is_refused(genuine: SignedRequest, ring: KeyRing, query: str) -> None:
    refused(dataclasses.replace(genuine, query=query), ring, "malformed_signature")


# --- the credentials ------------------------------------------------------------------------------------

def test_credentials_of_another_key_ring_are_refused(genuine: SignedRequest) -> None:
    refused(genuine, make_key_ring(), "invalid_gateway_token")


def test_expired_credentials_are_refused(ring: KeyRing) -> None:
    creds = issue(ring, make_gateway_session(lifetime=60, now=datetime.now(UTC).timestamp() - 3600))
    refused(botocore_request(creds), ring, "gateway_token_expired")


def test_a_token_sealed_for_another_access_key_id_is_refused(ring: KeyRing) -> None:
    first, second = issue(ring, make_gateway_session(subject="alice")), issue(ring, make_gateway_session(subject="bob"))
    for akid, token, secret in ((first.access_key_id, second.session_token, first.secret_access_key),
                                (second.access_key_id, first.session_token, first.secret_access_key),
                                (first.access_key_id, second.session_token, second.secret_access_key)):
        swapped = AwsCredentials(akid, secret, token, first.expiration)
        refused(botocore_request(swapped), ring, "invalid_gateway_token")


@pytest.mark.parametrize("position", [0, 5, 13, 40, -1])
def test_a_bit_flipped_token_is_refused(ring: KeyRing, creds: AwsCredentials, position: int) -> None:
    import base64
    raw = bytearray(base64.urlsafe_b64decode(creds.session_token + "=" * (-len(creds.session_token) % 4)))
    raw[position] ^= 0x80
    token = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    refused(botocore_request(dataclasses.replace(creds, session_token=token)), ring, "invalid_gateway_token")


def test_a_truncated_token_is_refused(ring: KeyRing, creds: AwsCredentials) -> None:
    refused(botocore_request(dataclasses.replace(creds, session_token=creds.session_token[:-3])), ring,
            "invalid_gateway_token")


def test_an_oversized_token_is_refused(ring: KeyRing, creds: AwsCredentials) -> None:
    refused(botocore_request(dataclasses.replace(creds, session_token=creds.session_token + "A" * 4096)), ring,
            "invalid_gateway_token")


def test_a_retired_key_is_refused(creds: AwsCredentials) -> None:
    retired = make_key_ring({"k2": b"\x02" * 32})
    refused(botocore_request(creds), retired, "unknown_gateway_key")


def test_a_guessed_secret_is_refused(ring: KeyRing, creds: AwsCredentials) -> None:
    guessed = dataclasses.replace(creds, secret_access_key="x" * 40)
    refused(botocore_request(guessed), ring, "signature_mismatch")


# --- resign ---------------------------------------------------------------------------------------------

UPSTREAM_CREDS = AwsCredentials("ASIAUPSTREAMEXAMPLE1", "upstream/secret+key/EXAMPLE0000000000000", "FwoGZXIvYXdzE" * 20,
                                2_000_000_000.0)


@pytest.mark.parametrize("url", ["https://dynamodb.us-east-1.amazonaws.com/", "http://127.0.0.1:4566/",
                                 "https://dynamodb.us-east-1.amazonaws.com:443/"])
def test_resigned_headers_verify(genuine: SignedRequest, url: str) -> None:
    now = 1_800_000_000.0
    given = [("Content-Type", header(genuine, "content-type")), ("X-Amz-Target", header(genuine, "x-amz-target"))]
    sent = resign("POST", url, given, genuine.body, UPSTREAM_CREDS, region=REGION, service=SERVICE, now=now)
    names = [name for name, _ in sent]
    assert names == ["Host", "Content-Type", "X-Amz-Target", "X-Amz-Date", "X-Amz-Security-Token", "Authorization"]
    parts = urlsplit(url)
    expected_host = parts.netloc.removesuffix(":443")
    request = SignedRequest("POST", parts.path, parts.query, tuple(sent), genuine.body)
    assert header(request, "host") == expected_host
    assert header(request, "x-amz-date") == "20270115T080000Z"
    credential = parse_signed(request, region=REGION, service=SERVICE, now=now)
    assert credential.access_key_id == UPSTREAM_CREDS.access_key_id
    assert credential.security_token == UPSTREAM_CREDS.session_token
    check_signature(request, credential, UPSTREAM_CREDS.secret_access_key)
    with pytest.raises(AuthenticationError):
        check_signature(request, credential, "another secret")


def test_resign_replaces_the_headers_signing_owns(genuine: SignedRequest) -> None:
    given = [("Content-Type", "application/x-amz-json-1.0"), ("X-Amz-Target", "DynamoDB_20120810.GetItem"),
             ("Authorization", "AWS4-HMAC-SHA256 client"), ("X-Amz-Date", "20000101T000000Z"),
             ("x-amz-security-token", "client token"), ("X-Amz-Content-SHA256", "UNSIGNED-PAYLOAD"),
             ("Host", "client.example"), ("Date", "Sat, 01 Jan 2000 00:00:00 GMT")]
    sent = resign("POST", "https://dynamodb.us-east-1.amazonaws.com/", given, genuine.body, UPSTREAM_CREDS,
                  region=REGION, service=SERVICE, now=1_800_000_000.0)
    lowered = [name.lower() for name, _ in sent]
    assert len(lowered) == len(set(lowered)) and "date" not in lowered and "x-amz-content-sha256" not in lowered
    request = SignedRequest("POST", "/", "", tuple(sent), genuine.body)
    assert header(request, "host") == "dynamodb.us-east-1.amazonaws.com"
    assert header(request, "x-amz-security-token") == UPSTREAM_CREDS.session_token
    credential = parse_signed(request, region=REGION, service=SERVICE, now=1_800_000_000.0)
    check_signature(request, credential, UPSTREAM_CREDS.secret_access_key)


def test_resign_uses_the_wall_clock_by_default(genuine: SignedRequest) -> None:
    before = datetime.now(UTC).timestamp()
    sent = resign("POST", "https://dynamodb.us-east-1.amazonaws.com/", [("Content-Type", "a"), ("X-Amz-Target", "b")],
                  genuine.body, UPSTREAM_CREDS, region=REGION, service=SERVICE)
    request = SignedRequest("POST", "/", "", tuple(sent), genuine.body)
    assert before - 1 <= signed_at(request) <= datetime.now(UTC).timestamp() + 1


def test_resign_signs_exactly_as_botocores_own_add_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    """resign computes its signature on botocore's canonical request without add_auth: the Authorization
    it sends must be the very one botocore's SigV4Auth.add_auth writes for the same request and time."""
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    when = datetime(2027, 1, 15, 8, 0, 0)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: when)   # add_auth's clock, pinned
    url, body = "https://dynamodb.us-east-1.amazonaws.com/", b'{"TableName":"orders"}'
    given = [("Content-Type", "application/x-amz-json-1.0"), ("X-Amz-Target", "DynamoDB_20120810.GetItem"),
             ("amz-sdk-invocation-id", "5e0f1d9c"), ("amz-sdk-request", "attempt=1; max=3")]
    ours = dict(resign("POST", url, given, body, UPSTREAM_CREDS, region=REGION, service=SERVICE,
                       now=when.replace(tzinfo=UTC).timestamp()))
    theirs = AWSRequest(method="POST", url=url, data=body, headers=dict(given))
    theirs.headers["Host"] = "dynamodb.us-east-1.amazonaws.com"
    botocore.auth.SigV4Auth(Credentials(UPSTREAM_CREDS.access_key_id, UPSTREAM_CREDS.secret_access_key,
                                        UPSTREAM_CREDS.session_token), SERVICE, REGION).add_auth(theirs)
    assert ours["X-Amz-Date"] == theirs.headers["X-Amz-Date"]
    assert ours["Authorization"] == theirs.headers["Authorization"]
