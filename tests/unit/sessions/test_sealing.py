"""Sealer: a sealed cookie or stored value opens only unchanged, under its own name (or store key), with a
key of the ring, before it expires; rotation keeps old values open; oversize values are refused."""

from __future__ import annotations

import base64
import json

import pytest

from proxy.aws.gateway_keys import new_key_ring_text, parse_key_ring
from proxy.sessions.sealing import MAX_COOKIE_VALUE_CHARS, NONCE_BYTES, SealError, Sealer

NOW = 1_800_000_000.0
NAME = "__Host-idgate-session"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def ring(*key_ids: str, active: str | None = None, keys: dict[str, str] | None = None):
    """A ring of the given key ids (fresh keys unless `keys` gives their base64), `active` sealing."""
    material = dict(keys or {})
    for key_id in key_ids:
        material.setdefault(key_id, json.loads(new_key_ring_text(key_id))["keys"][key_id])
    return parse_key_ring(json.dumps({"active": active or key_ids[0], "keys": material}), "<test ring>")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sealer(clock) -> Sealer:
    return Sealer(ring("k1"), clock=clock)


def parts(value: str) -> tuple[str, str, bytes]:
    version, key_id, sealed = value.split(".")
    return version, key_id, base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))


def encode(version: str, key_id: str, raw: bytes) -> str:
    return f"{version}.{key_id}.{base64.urlsafe_b64encode(raw).rstrip(b'=').decode()}"


def test_a_sealed_cookie_opens_with_its_payload_and_expiry(sealer):
    value = sealer.seal_cookie(NAME, {"sid": "abc"}, NOW + 60)
    assert sealer.open_cookie(NAME, value) == {"sid": "abc", "exp": NOW + 60}
    assert "abc" not in value            # sealed, not signed: the payload is not readable


def test_each_seal_is_fresh(sealer):
    assert sealer.seal_cookie(NAME, {"sid": "abc"}, NOW + 60) != sealer.seal_cookie(NAME, {"sid": "abc"}, NOW + 60)


@pytest.mark.parametrize("where", ["nonce", "ciphertext", "tag"])
def test_a_flipped_bit_in_any_part_does_not_open(sealer, where):
    version, key_id, raw = parts(sealer.seal_cookie(NAME, {"sid": "abc"}, NOW + 60))
    index = {"nonce": 0, "ciphertext": NONCE_BYTES + 1, "tag": len(raw) - 1}[where]
    for bit in range(8):
        tampered = bytearray(raw)
        tampered[index] ^= 1 << bit
        assert sealer.open_cookie(NAME, encode(version, key_id, bytes(tampered))) is None


@pytest.mark.parametrize("mangle", [
    pytest.param(lambda v, k, raw: encode("v2", k, raw), id="other_version"),
    pytest.param(lambda v, k, raw: encode("", k, raw), id="no_version"),
    pytest.param(lambda v, k, raw: encode(v, "k2", raw), id="other_key_id"),
    pytest.param(lambda v, k, raw: encode(v, "", raw), id="no_key_id"),
    pytest.param(lambda v, k, raw: encode(v, k, raw[:-1]), id="truncated_tag"),
    pytest.param(lambda v, k, raw: encode(v, k, raw[:NONCE_BYTES]), id="nonce_only"),
    pytest.param(lambda v, k, raw: encode(v, k, b""), id="empty_box"),
    pytest.param(lambda v, k, raw: encode(v, k, raw + b"\0"), id="appended_byte"),
    pytest.param(lambda v, k, raw: encode(v, k, raw[NONCE_BYTES:] + raw[:NONCE_BYTES]), id="parts_swapped"),
    pytest.param(lambda v, k, raw: f"{v}.{k}", id="no_box"),
    pytest.param(lambda v, k, raw: "", id="empty"),
    pytest.param(lambda v, k, raw: f"{v}.{k}.***", id="not_base64"),
    pytest.param(lambda v, k, raw: f"{v}.{k}.{'A' * (2 * MAX_COOKIE_VALUE_CHARS)}", id="huge"),
])
def test_a_mangled_value_does_not_open(sealer, mangle):
    assert sealer.open_cookie(NAME, mangle(*parts(sealer.seal_cookie(NAME, {"sid": "abc"}, NOW + 60)))) is None


@pytest.mark.parametrize("payload", [{"sid": "abc", "exp": "soon"}, {"sid": "abc", "exp": True},
                                     {"sid": "abc", "exp": None}, {"sid": "abc"}, ["sid", "abc"]])
def test_an_authentic_box_without_a_numeric_expiry_does_not_open(sealer, payload):
    # Not something this Sealer makes, but sealed with its key: the expiry check must not trust it.
    context = b"cookie\0" + NAME.encode() + b"\0k1"
    box = sealer._active.cookie.encrypt(b"\0" * NONCE_BYTES, json.dumps(payload).encode(), context)
    assert sealer.open_cookie(NAME, encode("v1", "k1", b"\0" * NONCE_BYTES + box)) is None


def test_a_cookie_does_not_open_under_another_name(sealer):
    value = sealer.seal_cookie(NAME, {"sid": "abc"}, NOW + 60)
    for other in ("__Host-idgate-login-0123456789abcdef", "__host-idgate-session", "__Host-idgate-session ",
                  "__Host-idgate-sessio", "__Host-idgate-session\0", ""):
        assert sealer.open_cookie(other, value) is None


def test_a_login_cookie_does_not_open_as_the_session_cookie(sealer):
    login = sealer.seal_cookie("__Host-idgate-login-0123456789abcdef", {"sid": "abc"}, NOW + 60)
    assert sealer.open_cookie(NAME, login) is None


def test_name_and_key_id_cannot_trade_bytes(clock):
    # The associated data is name, NUL, key id: moving characters between them changes it.
    sealer = Sealer(ring("k1", "k12"), clock=clock)
    value = sealer.seal_cookie("a2", {"sid": "abc"}, NOW + 60)
    _, _, raw = parts(value)
    assert sealer.open_cookie("a", encode("v1", "k12", raw)) is None


def test_cookies_and_stored_values_do_not_open_as_each_other(sealer):
    cookie = sealer.seal_cookie(NAME, {"sid": "abc"}, NOW + 60)
    stored = sealer.seal_stored(NAME, {"sid": "abc"}, NOW + 60)
    assert sealer.open_stored(NAME, cookie) is None
    assert sealer.open_cookie(NAME, stored) is None


def test_stored_tokens_open_only_for_their_session(sealer):
    stored = sealer.seal_stored("a" * 64, {"refresh_token": "rt"}, NOW + 60)
    assert sealer.open_stored("a" * 64, stored) == {"refresh_token": "rt", "exp": NOW + 60}
    assert sealer.open_stored("b" * 64, stored) is None


def test_another_key_does_not_open(clock):
    one, other = Sealer(ring("k1"), clock=clock), Sealer(ring("k1"), clock=clock)   # same id, other key
    assert other.open_cookie(NAME, one.seal_cookie(NAME, {"sid": "abc"}, NOW + 60)) is None


def test_an_expired_value_does_not_open(sealer, clock):
    value = sealer.seal_cookie(NAME, {"sid": "abc"}, NOW + 60)
    clock.now = NOW + 59.999
    assert sealer.open_cookie(NAME, value) is not None
    clock.now = NOW + 60
    assert sealer.open_cookie(NAME, value) is None
    assert sealer.open_cookie(NAME, sealer.seal_cookie(NAME, {"sid": "abc"}, NOW)) is None


def test_a_payload_cannot_choose_its_own_expiry(sealer, clock):
    value = sealer.seal_cookie(NAME, {"sid": "abc", "exp": NOW + 10 ** 9}, NOW + 60)
    clock.now = NOW + 61
    assert sealer.open_cookie(NAME, value) is None


def material(key_id: str) -> str:
    return str(json.loads(new_key_ring_text(key_id))["keys"][key_id])


def test_rotation_keeps_old_values_open_and_seals_with_the_new_key(clock):
    k1, k2 = material("k1"), material("k2")
    before = Sealer(ring("k1", keys={"k1": k1}), clock=clock)
    value = before.seal_cookie(NAME, {"sid": "abc"}, NOW + 60)
    rotated = Sealer(ring("k1", "k2", active="k2", keys={"k1": k1, "k2": k2}), clock=clock)
    assert rotated.open_cookie(NAME, value) == {"sid": "abc", "exp": NOW + 60}
    fresh = rotated.seal_cookie(NAME, {"sid": "def"}, NOW + 60)
    assert parts(fresh)[1] == "k2"
    assert before.open_cookie(NAME, fresh) is None     # a replica still on the old ring cannot open it


def test_a_key_dropped_from_the_ring_no_longer_opens(clock):
    k1, k2 = material("k1"), material("k2")
    value = Sealer(ring("k1", "k2", keys={"k1": k1, "k2": k2}), clock=clock).seal_cookie(NAME, {"sid": "abc"}, NOW + 60)
    assert Sealer(ring("k2", keys={"k2": k2}), clock=clock).open_cookie(NAME, value) is None


def test_a_value_too_large_for_a_cookie_is_refused(sealer):
    with pytest.raises(SealError):
        sealer.seal_cookie(NAME, {"pad": "x" * MAX_COOKIE_VALUE_CHARS}, NOW + 60)
    fits = sealer.seal_cookie(NAME, {"pad": "x" * 2700}, NOW + 60)
    assert len(fits) <= MAX_COOKIE_VALUE_CHARS and sealer.open_cookie(NAME, fits) is not None


@pytest.mark.parametrize("mangle", [
    pytest.param(lambda v: v[:12] + "!" + v[12:], id="junk_character"),
    pytest.param(lambda v: v[:12] + "." + v[12:], id="extra_dot"),
    pytest.param(lambda v: v[:12] + "+" + v[12:], id="standard_alphabet_character"),
    pytest.param(lambda v: v + "=", id="padding"),
    pytest.param(lambda v: v + "\n", id="newline"),
    pytest.param(lambda v: v[:12] + " " + v[12:], id="space"),
])
def test_a_value_opens_only_in_the_spelling_it_was_sealed_in(sealer, mangle):
    """One sealed value, one spelling: base64 decoding that skips what it does not know would let a cookie
    be respelled at will, and anything keyed on the cookie string (a cache, a revocation list, a log
    search) would then see many values where there is one."""
    value = sealer.seal_cookie(NAME, {"sid": "abc"}, NOW + 60)
    assert sealer.open_cookie(NAME, mangle(value)) is None
