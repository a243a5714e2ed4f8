"""Gateway credentials: what issue seals opens to the same session with the same secret on any replica
holding the ring, and every forged, tampered, foreign, swapped, retired, expired or oversized credential
is refused with its reason and a fixed message."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import re
import secrets
from typing import Any

import pytest

from proxy.aws.gateway_keys import KeyRing
from proxy.aws.gateway_tokens import (
    MAX_SESSION_TOKEN_CHARS, GatewaySession, SessionOpener, derive_secret, issue, open_session,
)
from proxy.core.errors import AccessDenied, AuthenticationError
from tests.factories import make_gateway_session, make_key_ring

NOW = 1_800_000_000.0
ACCESS_KEY_ID = re.compile(r"IDG[A-Za-z0-9]{1,16}_[A-Z2-7]{16}")


def session(**overrides: Any) -> GatewaySession:
    return make_gateway_session(now=NOW, **overrides)


def refused(ring: KeyRing, access_key_id: str, token: str, reason: str, now: float = NOW) -> str:
    with pytest.raises(AuthenticationError) as caught:
        open_session(ring, access_key_id, token, now)
    assert caught.value.reason == reason
    return caught.value.message


def raw_token(token: str) -> bytearray:
    return bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def encode_token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def seal_plaintext(ring: KeyRing, access_key_id: str, fields: dict[str, Any]) -> str:
    """A token sealed correctly (right key, right aad) around arbitrary fields: what only a key holder
    with a bug could make, to show that open_session checks the fields and not only the seal."""
    nonce = secrets.token_bytes(12)
    sealed = ring.active.aead.encrypt(nonce, json.dumps(fields).encode(), access_key_id.encode())
    return encode_token(b"\x01" + nonce + sealed)


def test_issued_credentials_open_to_the_session_and_its_secret() -> None:
    ring = make_key_ring()
    original = session()
    creds = issue(ring, original)
    assert ACCESS_KEY_ID.fullmatch(creds.access_key_id) and creds.access_key_id.startswith("IDGk1_")
    assert 16 <= len(creds.access_key_id) <= 128 and "/" not in creds.access_key_id
    assert re.fullmatch(r"[A-Za-z0-9_-]+", creds.session_token) and len(creds.session_token) <= MAX_SESSION_TOKEN_CHARS
    assert len(creds.secret_access_key) == 40 and creds.expiration == original.expires_at
    opened, secret = open_session(ring, creds.access_key_id, creds.session_token, NOW)
    assert opened == dataclasses.replace(original, key_id="k1")
    assert secret == creds.secret_access_key


def test_the_secret_is_the_documented_hmac() -> None:
    ring = make_key_ring()
    creds = issue(ring, session())
    mac = hmac.new(ring.active.secret_key,
                   b"idgate gateway secret\x00" + creds.access_key_id.encode() + b"\x00" + creds.session_token.encode(),
                   hashlib.sha256).digest()
    assert creds.secret_access_key == base64.b64encode(mac[:30]).decode()
    assert derive_secret(ring.active, creds.access_key_id, creds.session_token) == creds.secret_access_key


def test_the_token_is_version_nonce_and_aes_gcm_bound_to_the_access_key_id() -> None:
    ring = make_key_ring()
    creds = issue(ring, session(claims={"tenant": "acme", "n": 7}))
    raw = bytes(raw_token(creds.session_token))
    assert raw[0] == 1
    fields = json.loads(ring.active.aead.decrypt(raw[1:13], raw[13:], creds.access_key_id.encode()))
    assert fields["v"] == 1 and fields["k"] == "k1" and fields["s"] == "svc-etl-7" and fields["m"]["n"] == 7
    assert set(fields) == set("vkiscgmrudte")


def test_a_fixed_random_source_makes_fixed_credentials() -> None:
    ring = make_key_ring()
    first = issue(ring, session(), random=lambda n: b"\x00" * n)
    again = issue(ring, session(), random=lambda n: b"\x00" * n)
    assert first == again and first.access_key_id == "IDGk1_AAAAAAAAAAAAAAAA"
    assert issue(ring, session()).access_key_id != issue(ring, session()).access_key_id


def test_every_replica_with_the_ring_opens_the_credentials() -> None:
    master = secrets.token_bytes(32)
    creds = issue(make_key_ring({"k1": master}), session())
    assert open_session(make_key_ring({"k1": master}), creds.access_key_id, creds.session_token, NOW)[1] \
        == creds.secret_access_key


def test_credentials_of_another_key_ring_are_refused() -> None:
    creds = issue(make_key_ring({"k1": secrets.token_bytes(32)}), session())
    message = refused(make_key_ring({"k1": secrets.token_bytes(32)}), creds.access_key_id, creds.session_token,
                      "invalid_gateway_token")
    assert message == "invalid gateway credentials"


def test_a_token_sealed_for_another_access_key_id_is_refused() -> None:
    ring = make_key_ring()
    first, second = issue(ring, session(subject="alice")), issue(ring, session(subject="bob"))
    refused(ring, first.access_key_id, second.session_token, "invalid_gateway_token")
    refused(ring, second.access_key_id, first.session_token, "invalid_gateway_token")


@pytest.mark.parametrize("position", [0, 1, 12, 13, 20, -17, -1])
def test_a_bit_flipped_token_is_refused(position: int) -> None:
    ring = make_key_ring()
    creds = issue(ring, session())
    raw = raw_token(creds.session_token)
    raw[position] ^= 0x01
    refused(ring, creds.access_key_id, encode_token(bytes(raw)), "invalid_gateway_token")


@pytest.mark.parametrize("cut", [1, 2, 4, 16, 40])
def test_a_truncated_token_is_refused(cut: int) -> None:
    ring = make_key_ring()
    creds = issue(ring, session())
    refused(ring, creds.access_key_id, creds.session_token[:-cut], "invalid_gateway_token")


@pytest.mark.parametrize("spoil", [
    pytest.param(lambda t: t + "=", id="padding"),
    pytest.param(lambda t: t.replace("-", "+").replace("_", "/") if ("-" in t or "_" in t) else "+" + t, id="std-alphabet"),
    pytest.param(lambda t: t[:10] + "." + t[10:], id="foreign-char"),
    pytest.param(lambda t: t[:10] + "é" + t[10:], id="non-ascii"),
    pytest.param(lambda t: "", id="empty"),
    pytest.param(lambda t: "AQ", id="version-only"),
])
def test_a_misencoded_token_is_refused(spoil: Any) -> None:
    ring = make_key_ring()
    creds = issue(ring, session())
    refused(ring, creds.access_key_id, spoil(creds.session_token), "invalid_gateway_token")


def test_a_second_spelling_of_the_same_token_is_refused() -> None:
    """base64 without padding leaves spare bits in the last character: setting them decodes to the same
    sealed bytes, so only the canonical spelling may open (else one token, two secrets)."""
    ring = make_key_ring()
    for _ in range(20):
        creds = issue(ring, session())
        if len(creds.session_token) % 4:
            break
    token = creds.session_token
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = token[:-1] + alphabet[alphabet.index(token[-1]) | 1]
    assert twin != token and raw_token(twin) == raw_token(token)
    refused(ring, creds.access_key_id, twin, "invalid_gateway_token")


@pytest.mark.parametrize("access_key_id", [
    "", "AKIAIOSFODNN7EXAMPLE", "IDGk1_AAAAAAAAAAAAAAA", "IDGk1_AAAAAAAAAAAAAAAAA", "IDGk1_AAAAAAAAAAAAAAA1",
    "IDGk1AAAAAAAAAAAAAAAA", "idgk1_AAAAAAAAAAAAAAAA", "IDGk_1_AAAAAAAAAAAAAAAA", "IDGk1_aaaaaaaaaaaaaaaa",
])
def test_a_malformed_access_key_id_is_refused(access_key_id: str) -> None:
    ring = make_key_ring()
    creds = issue(ring, session())
    refused(ring, access_key_id, creds.session_token, "invalid_gateway_token")


def test_a_retired_key_is_unknown_and_rotation_keeps_the_old_key_opening() -> None:
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    before = issue(make_key_ring({"k1": old}), session())
    during = make_key_ring({"k2": new, "k1": old}, active="k2")
    assert open_session(during, before.access_key_id, before.session_token, NOW)[0].key_id == "k1"
    assert issue(during, session()).access_key_id.startswith("IDGk2_")
    after = make_key_ring({"k2": new})
    message = refused(after, before.access_key_id, before.session_token, "unknown_gateway_key")
    assert "k1" not in message


def test_expired_credentials_are_refused() -> None:
    ring = make_key_ring()
    creds = issue(ring, session(lifetime=600))
    assert open_session(ring, creds.access_key_id, creds.session_token, NOW + 599)
    refused(ring, creds.access_key_id, creds.session_token, "gateway_token_expired", now=NOW + 600)
    refused(ring, creds.access_key_id, creds.session_token, "gateway_token_expired", now=NOW + 86400)


def test_an_oversized_token_is_refused_before_any_decoding() -> None:
    ring = make_key_ring()
    # A key id this ring lacks: a decoder that ran first would answer unknown_gateway_key instead.
    refused(ring, "IDGzz_AAAAAAAAAAAAAAAA", "A" * (MAX_SESSION_TOKEN_CHARS + 1), "invalid_gateway_token")


def test_issue_refuses_an_identity_too_large_for_a_header() -> None:
    ring = make_key_ring()
    with pytest.raises(AccessDenied) as caught:
        issue(ring, session(claims={"blob": "x" * 3100}))
    assert caught.value.reason == "gateway_token_too_large"
    low, high = 0, 3100                     # the largest claim that fits: the limit is exactly the token's
    while high - low > 1:
        middle = (low + high) // 2
        try:
            issue(ring, session(claims={"blob": "x" * middle}))
            low = middle
        except AccessDenied:
            high = middle
    fits = issue(ring, session(claims={"blob": "x" * low}))
    assert len(fits.session_token) in (MAX_SESSION_TOKEN_CHARS - 1, MAX_SESSION_TOKEN_CHARS)
    assert open_session(ring, fits.access_key_id, fits.session_token, NOW)[0].claims["blob"] == "x" * low


def test_the_sealed_key_id_must_be_the_access_key_ids() -> None:
    ring = make_key_ring()
    creds = issue(ring, session(), random=lambda n: b"\x00" * n)
    fields = json.loads(ring.active.aead.decrypt(*_split(creds.session_token), creds.access_key_id.encode()))
    refused(ring, creds.access_key_id, seal_plaintext(ring, creds.access_key_id, {**fields, "k": "k2"}),
            "invalid_gateway_token")
    assert open_session(ring, creds.access_key_id, seal_plaintext(ring, creds.access_key_id, fields), NOW)


def _split(token: str) -> tuple[bytes, bytes]:
    raw = bytes(raw_token(token))
    return raw[1:13], raw[13:]


@pytest.mark.parametrize(("name", "value"), [
    ("v", 2), ("v", True), ("v", 1.0), ("i", None), ("s", 7), ("c", 1), ("g", "data-eng"), ("g", [1]),
    ("m", []), ("r", None), ("u", [None]), ("d", "ABC"), ("d", 5), ("t", "1"), ("t", True), ("e", 1.8e9),
    ("e", None), ("x", 1),
])
def test_every_sealed_field_is_type_checked(name: str, value: Any) -> None:
    ring = make_key_ring()
    creds = issue(ring, session())
    fields = json.loads(ring.active.aead.decrypt(*_split(creds.session_token), creds.access_key_id.encode()))
    fields[name] = value
    refused(ring, creds.access_key_id, seal_plaintext(ring, creds.access_key_id, fields), "invalid_gateway_token")


@pytest.mark.parametrize("name", list("vkiscgmrudte"))
def test_every_sealed_field_is_required(name: str) -> None:
    ring = make_key_ring()
    creds = issue(ring, session())
    fields = json.loads(ring.active.aead.decrypt(*_split(creds.session_token), creds.access_key_id.encode()))
    del fields[name]
    refused(ring, creds.access_key_id, seal_plaintext(ring, creds.access_key_id, fields), "invalid_gateway_token")


def test_issue_refuses_a_session_that_could_never_open() -> None:
    with pytest.raises(ValueError):
        issue(make_key_ring(), session(scope_sha256="not-a-digest"))


def test_a_claim_with_a_lone_surrogate_still_seals() -> None:
    ring = make_key_ring()
    creds = issue(ring, session(claims={"name": "\ud800"}))
    assert open_session(ring, creds.access_key_id, creds.session_token, NOW)[0].claims == {"name": "\ud800"}


def test_no_session_value_or_secret_appears_in_a_repr() -> None:
    creds = issue(make_key_ring(), session())
    assert creds.secret_access_key not in repr(creds) and creds.session_token not in repr(creds)


# --- SessionOpener ---------------------------------------------------------------------------------------

def test_the_opener_caches_what_it_opened() -> None:
    ring = make_key_ring()
    creds = issue(ring, session())
    opener = SessionOpener(ring)
    first = opener.open(creds.access_key_id, creds.session_token, NOW)
    assert opener.open(creds.access_key_id, creds.session_token, NOW + 1) is first
    assert first[1] == creds.secret_access_key
    with pytest.raises(TypeError):      # one caller cannot change what the next one is told
        first[0].claims["tenant"] = "other"  # type: ignore[index]


def test_the_opener_checks_expiry_on_a_cache_hit() -> None:
    ring = make_key_ring()
    creds = issue(ring, session(lifetime=600))
    opener = SessionOpener(ring)
    opener.open(creds.access_key_id, creds.session_token, NOW)
    with pytest.raises(AuthenticationError) as caught:
        opener.open(creds.access_key_id, creds.session_token, NOW + 600)
    assert caught.value.reason == "gateway_token_expired"
    with pytest.raises(AuthenticationError):
        opener.open(creds.access_key_id, creds.session_token, NOW + 601)


def test_the_opener_refuses_what_open_session_refuses_and_caches_no_refusal() -> None:
    ring = make_key_ring()
    creds = issue(ring, session())
    other = issue(ring, session())
    opener = SessionOpener(ring)
    for _ in range(2):
        with pytest.raises(AuthenticationError) as caught:
            opener.open(creds.access_key_id, other.session_token, NOW)
        assert caught.value.reason == "invalid_gateway_token"
    assert opener.open(creds.access_key_id, creds.session_token, NOW)[1] == creds.secret_access_key


def test_the_opener_cache_is_bounded() -> None:
    ring = make_key_ring()
    opener = SessionOpener(ring, maxsize=2)
    issued = [issue(ring, session()) for _ in range(3)]
    opened = [opener.open(c.access_key_id, c.session_token, NOW) for c in issued]
    assert opener.open(issued[2].access_key_id, issued[2].session_token, NOW) is opened[2]
    assert opener.open(issued[0].access_key_id, issued[0].session_token, NOW) is not opened[0]   # evicted
