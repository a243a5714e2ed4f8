"""SigV4 for the DynamoDB gateway: parse and check the signature a client made with idgate's gateway
credentials, and re-sign the forwarded request with real STS credentials.  Canonicalization is botocore's
(SigV4Auth), so the gateway agrees byte for byte with the SDKs that sign; this module only decides what
botocore is fed: exactly the client's signed headers as received, a payload hash computed from the body,
and the client's own timestamp.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from urllib.parse import unquote

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth, _host_from_url
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import BotoCoreError
from botocore.utils import normalize_url_path

from proxy.aws.credentials import AwsCredentials
from proxy.core.errors import AuthenticationError, IdgateError
from proxy.core.reasons import Reason

REQUIRED_SIGNED_HEADERS = frozenset({"host", "x-amz-date", "x-amz-security-token", "x-amz-target", "content-type"})
MAX_CLOCK_SKEW = 300.0
SIGNING_STEP_CACHE_SIZE = 16384     # 4 steps per (secret, day): a few thousand live credentials
ALGORITHM = "AWS4-HMAC-SHA256"
_SCHEME = ALGORITHM + " "
_AMZ_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_SCOPE_DATE = re.compile(r"[0-9]{8}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_ACCESS_KEY_ID = re.compile(r"[A-Za-z0-9_]{16,128}")
_TOKEN = r"[a-z0-9!#$%&'*+.^_`|~-]+"                    # an RFC 9110 token, lowercase
_SIGNED_HEADERS = re.compile(f"{_TOKEN}(?:;{_TOKEN})*")
_COMPONENTS = ("Credential", "SignedHeaders", "Signature")
# Owned by signing: whatever the caller passes under these names is dropped before resign signs.
_SIGNING_HEADERS = frozenset({"authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256",
                              "date", "host"})

# One fixed message per reason: the client learns which rule it broke, never a value idgate computed.
_MESSAGES = {
    Reason.MISSING_SIGNATURE: "the request is not signed with AWS Signature Version 4 in the Authorization header",
    Reason.MALFORMED_SIGNATURE: "malformed AWS Signature Version 4",
    Reason.UNSIGNED_HEADER: "a header that must be signed is not, or a signed header is missing",
    Reason.DUPLICATE_SIGNED_HEADER: "a signed or x-amz-* header appears more than once",
    Reason.WRONG_SIGNATURE_SCOPE: "the signature's credential scope is not this gateway's",
    Reason.SIGNATURE_EXPIRED: "the signature's X-Amz-Date is outside the allowed clock skew",
    Reason.PAYLOAD_HASH_MISMATCH: "X-Amz-Content-SHA256 is not the SHA-256 of the body",
    Reason.SIGNATURE_MISMATCH: "the request signature does not match",
}


def _refuse(reason: Reason) -> AuthenticationError:
    return AuthenticationError(_MESSAGES[reason], reason=reason)


@dataclass(frozen=True, slots=True)
class SignedRequest:
    method: str
    path: str                                 # the raw path as received, e.g. "/" or "/.idgate/dynamodb"
    query: str                                # raw query string ("" for none)
    headers: Sequence[tuple[str, str]]        # every header as received, in order, original case
    body: bytes


@dataclass(frozen=True, slots=True)
class Credential:
    """What the Authorization header claims."""

    access_key_id: str
    date: str                                 # YYYYMMDD of the scope
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str                             # X-Amz-Date
    security_token: str = field(repr=False)   # X-Amz-Security-Token


def _has_query_auth(query: str) -> bool:
    """Any X-Amz-* query parameter (X-Amz-Signature, -Credential, -Algorithm...): the gateway takes header
    auth only, and no DynamoDB call has a query."""
    return any(unquote(pair.partition("=")[0]).lower().startswith("x-amz-") for pair in query.split("&"))


def _parse_authorization(value: str) -> dict[str, str]:
    """The three components of `AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`, each
    exactly once and nothing else, else MALFORMED_SIGNATURE."""
    components: dict[str, str] = {}
    for part in value[len(_SCHEME):].split(","):
        name, eq, component = part.strip(" \t").partition("=")
        if not eq or name not in _COMPONENTS or name in components or not component:
            raise _refuse(Reason.MALFORMED_SIGNATURE)
        components[name] = component
    if len(components) != len(_COMPONENTS):
        raise _refuse(Reason.MALFORMED_SIGNATURE)
    return components


@functools.lru_cache(maxsize=256)    # concurrent requests mostly share their second; refusals are not cached
def _epoch_of_amz_date(amz_date: str) -> float:
    if not _AMZ_DATE.fullmatch(amz_date):
        raise _refuse(Reason.MALFORMED_SIGNATURE)
    try:   # slicing, not strptime: a tenth of the cost, and the regex already fixed the shape
        moment = datetime(int(amz_date[0:4]), int(amz_date[4:6]), int(amz_date[6:8]), int(amz_date[9:11]),
                          int(amz_date[11:13]), int(amz_date[13:15]), tzinfo=UTC)
    except ValueError:
        raise _refuse(Reason.MALFORMED_SIGNATURE) from None
    return moment.timestamp()


def parse_signed(request: SignedRequest, *, region: str, service: str, now: float,
                 max_skew: float = MAX_CLOCK_SKEW) -> Credential:
    """Every check of a SigV4-signed request that needs neither the body nor a secret (its head alone:
    a client is asked for its body only once these pass); check_payload_hash and check_signature then
    need the body, and the secret the credential's access key id and security token derive."""
    if request.query and _has_query_auth(request.query):
        raise _refuse(Reason.MALFORMED_SIGNATURE)

    values: dict[str, str] = {}       # the first value of each lowercased name
    repeated: set[str] = set()        # names sent more than once
    underscored = False
    for name, value in request.headers:
        lower = name.lower()
        if lower in values:
            repeated.add(lower)
        else:
            values[lower] = value
            underscored = underscored or "_" in lower
    if underscored:   # rare; `_` read as `-`: X_Amz_Date beside X-Amz-Date is a second X-Amz-Date to some servers
        spelled = [lower.replace("_", "-") for lower in values]
        repeated = {lower.replace("_", "-") for lower in repeated}
        repeated.update(name for name in spelled if spelled.count(name) > 1)
    for name in repeated:
        if name in ("host", "authorization") or name.startswith("x-amz-"):
            raise _refuse(Reason.DUPLICATE_SIGNED_HEADER)

    authorization = values.get("authorization")
    if authorization is None or not authorization.startswith(_SCHEME):
        raise _refuse(Reason.MISSING_SIGNATURE)
    components = _parse_authorization(authorization)
    scope = components["Credential"].split("/")
    signed = tuple(components["SignedHeaders"].split(";"))
    if (len(scope) != 5 or not _ACCESS_KEY_ID.fullmatch(scope[0]) or not _SCOPE_DATE.fullmatch(scope[1])
            or not _SIGNATURE.fullmatch(components["Signature"])
            or not _SIGNED_HEADERS.fullmatch(components["SignedHeaders"])
            or list(signed) != sorted(set(signed))):              # sorted, no name twice
        raise _refuse(Reason.MALFORMED_SIGNATURE)

    if repeated and not repeated.isdisjoint(name.replace("_", "-") for name in signed):
        raise _refuse(Reason.DUPLICATE_SIGNED_HEADER)
    if not REQUIRED_SIGNED_HEADERS.issubset(signed) or not values.keys() >= set(signed):
        raise _refuse(Reason.UNSIGNED_HEADER)

    amz_date = values["x-amz-date"]
    signed_at = _epoch_of_amz_date(amz_date)
    access_key_id, date, scope_region, scope_service, terminator = scope
    if (terminator != "aws4_request" or scope_region != region or scope_service != service
            or date != amz_date[:8]):
        raise _refuse(Reason.WRONG_SIGNATURE_SCOPE)
    if abs(signed_at - now) > max_skew:
        raise _refuse(Reason.SIGNATURE_EXPIRED)

    return Credential(access_key_id=access_key_id, date=date, region=scope_region, service=scope_service,
                      signed_headers=signed, signature=components["Signature"], amz_date=amz_date,
                      security_token=values["x-amz-security-token"])


@functools.lru_cache(maxsize=SIGNING_STEP_CACHE_SIZE)
def _signing_step(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()     # SigV4Auth._sign, non-hex


class _CachedKeySigV4(SigV4Auth):  # type: ignore[misc]   # botocore ships no type hints
    """SigV4Auth whose signing-key derivation (four HMACs of secret, date, region, service: each ~5 µs with
    OpenSSL 3) is remembered across requests; the final HMAC of the string to sign is botocore's own.  Only
    verified or idgate-held secrets reach it, so the cache holds what memory already holds."""

    def _sign(self, key: bytes, msg: str, hex: bool = False) -> bytes | str:
        return super()._sign(key, msg, hex=True) if hex else _signing_step(key, msg)


class _SignedHeaders(dict[str, str]):
    """The client's signed headers, one value each (parse_signed refused repeats), in the one shape
    SigV4Auth.canonical_headers reads: iteration and get_all.  A dict, not botocore's HTTPHeaders (an
    email.message.Message whose every lookup scans and lowercases all names)."""

    def get_all(self, name: str) -> list[str]:
        return [self[name]]


class _VerifyingSigV4(_CachedKeySigV4):
    """botocore's canonical request over exactly the client's signed headers and the body's own hash
    (SigV4Auth would add a Host from the URL, drop blacklisted names, and trust X-Amz-Content-SHA256)."""

    def __init__(self, credentials: ReadOnlyCredentials, service: str, region: str, signed: _SignedHeaders,
                 payload_sha256: str) -> None:
        super().__init__(credentials, service, region)
        self._signed = signed
        self._payload_sha256 = payload_sha256

    def headers_to_sign(self, request: AWSRequest) -> _SignedHeaders:
        return self._signed

    def payload(self, request: AWSRequest) -> str:
        return self._payload_sha256


def check_payload_hash(request: SignedRequest) -> None:
    """X-Amz-Content-SHA256, when sent, must be the body's SHA-256.  Compared although check_signature never
    reads it (it hashes the body itself): a header that says UNSIGNED-PAYLOAD or STREAMING-* must not reach
    anything that might believe it."""
    content_sha256 = next((v for k, v in request.headers if k.lower() == "x-amz-content-sha256"), None)
    if content_sha256 is not None:
        actual = hashlib.sha256(request.body).hexdigest().encode()
        if not hmac.compare_digest(content_sha256.encode("utf-8", "replace"), actual):
            raise _refuse(Reason.PAYLOAD_HASH_MISMATCH)


def check_signature(request: SignedRequest, credential: Credential, secret_access_key: str) -> None:
    """Recompute the signature of a request parse_signed accepted; SIGNATURE_MISMATCH unless it is equal."""
    # botocore canonicalizes the path with dot segments and repeated slashes removed: demand a path already
    # in that form, so the signature covers the very spelling received, not merely one that normalizes alike.
    if not request.path.startswith("/") or "#" in request.path or normalize_url_path(request.path) != request.path:
        raise _refuse(Reason.SIGNATURE_MISMATCH)
    wanted = set(credential.signed_headers)
    signed = _SignedHeaders()
    for name, value in request.headers:
        if (lower := name.lower()) in wanted:
            signed[lower] = value
    url = "http://gateway" + request.path + ("?" + request.query if request.query else "")
    try:
        expected, _ = _sign(request.method, url, signed, hashlib.sha256(request.body).hexdigest(),
                            ReadOnlyCredentials(credential.access_key_id, secret_access_key, None),
                            credential.region, credential.service, credential.amz_date)
    except (BotoCoreError, ValueError, UnicodeError):
        raise _refuse(Reason.SIGNATURE_MISMATCH) from None
    if not hmac.compare_digest(expected.encode(), credential.signature.encode()):
        raise _refuse(Reason.SIGNATURE_MISMATCH)


def _sign(method: str, url: str, signed: _SignedHeaders, payload_sha256: str, credentials: ReadOnlyCredentials,
          region: str, service: str, timestamp: str) -> tuple[str, str]:
    """botocore's signature over exactly `signed` (lower-case names) and the payload hash, at `timestamp`;
    with its credential scope (access key id / date / region / service / aws4_request)."""
    signer = _VerifyingSigV4(credentials, service, region, signed, payload_sha256)
    aws_request = AWSRequest(method=method, url=url)
    aws_request.context["timestamp"] = timestamp
    canonical = signer.canonical_request(aws_request)
    return signer.signature(signer.string_to_sign(aws_request, canonical), aws_request), signer.scope(aws_request)


def resign(method: str, url: str, headers: Sequence[tuple[str, str]], body: bytes, credentials: AwsCredentials,
           *, region: str, service: str, now: float | None = None) -> list[tuple[str, str]]:
    """The headers to send `body` to `url` signed with `credentials`: Host (from the url), the given ones
    (minus any that signing owns: Authorization, X-Amz-Date, X-Amz-Security-Token, X-Amz-Content-SHA256,
    Date, Host), X-Amz-Date, X-Amz-Security-Token and Authorization.  Every header sent is signed, on
    botocore's canonicalization (the same path as check_signature: no AWSRequest headers, no add_auth)."""
    host = _host_from_url(url)
    timestamp = datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime(SIGV4_TIMESTAMP)
    kept = [(name, value) for name, value in headers if name.lower() not in _SIGNING_HEADERS]
    sent = [("Host", host), *kept, ("X-Amz-Date", timestamp), ("X-Amz-Security-Token", credentials.session_token)]
    signed = _SignedHeaders((name.lower(), value) for name, value in sent)
    if len(signed) != len(sent):
        raise IdgateError("a header to sign is given twice", reason=Reason.INTERNAL)
    try:
        signature, scope = _sign(method, url, signed, hashlib.sha256(body).hexdigest(),
                                 ReadOnlyCredentials(credentials.access_key_id, credentials.secret_access_key,
                                                     credentials.session_token), region, service, timestamp)
    except (BotoCoreError, ValueError, UnicodeError) as exc:
        raise IdgateError("could not sign the upstream request", reason=Reason.INTERNAL) from exc
    # botocore's scope starts with the access key id.
    authorization = (f"{ALGORITHM} Credential={scope}, "
                     f"SignedHeaders={';'.join(sorted(signed))}, Signature={signature}")
    return [*sent, ("Authorization", authorization)]
