"""The gateway key ring: HKDF-derived keys per master key, every problem of a ring file reported at once
without showing key material, the environment variable before the file, and a fresh ring that loads."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import logging
import os
from pathlib import Path

import pytest

from proxy.aws.gateway_keys import (
    KEY_ID, GatewayKey, KeyRing, derive_gateway_key, load_key_ring, new_key_ring_text, parse_key_ring,
)
from proxy.config.schema import ENV_GATEWAY_KEYS
from proxy.core.errors import ConfigError

MASTER_1 = bytes(range(32))
MASTER_2 = bytes(range(100, 140))
B64_1 = base64.b64encode(MASTER_1).decode()
B64_2 = base64.b64encode(MASTER_2).decode()


def ring_text(**doc: object) -> str:
    return json.dumps(doc, indent=2)


def rfc5869_sha256(master: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 to 32 bytes with no salt, written out from RFC 5869 (independent of cryptography)."""
    prk = hmac.new(b"\x00" * 32, master, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_key_ring(text, "ring.json")
    assert all(p.file == "ring.json" for p in caught.value.problems)
    return [p.message for p in caught.value.problems]


def test_a_ring_derives_independent_seal_and_secret_keys_per_master_key() -> None:
    ring = parse_key_ring(ring_text(active="k2", keys={"k2": B64_2, "k1": B64_1}, redaction_key=B64_1), "r")
    assert ring.active.key_id == "k2" and set(ring.keys) == {"k1", "k2"} and ring.keys["k2"] is ring.active
    k1 = ring.keys["k1"]
    assert k1.seal_key == rfc5869_sha256(MASTER_1, b"idgate gateway seal v1")
    assert k1.secret_key == rfc5869_sha256(MASTER_1, b"idgate gateway secret v1")
    assert ring.redaction_key == rfc5869_sha256(MASTER_1, b"idgate audit redaction v1")
    assert len({k1.seal_key, k1.secret_key, ring.keys["k2"].seal_key, ring.keys["k2"].secret_key, MASTER_1}) == 5


def test_the_redaction_key_is_optional() -> None:
    assert parse_key_ring(ring_text(active="k1", keys={"k1": B64_1}), "r").redaction_key is None


def test_the_aead_is_built_once_per_key() -> None:
    ring = parse_key_ring(ring_text(active="k1", keys={"k1": B64_1}), "r")
    sealed = ring.active.aead.encrypt(b"\x00" * 12, b"x", None)
    assert ring.active.aead is ring.keys["k1"].aead
    assert derive_gateway_key("k1", MASTER_1).aead.decrypt(b"\x00" * 12, sealed, None) == b"x"


def test_reprs_never_show_key_material() -> None:
    ring = parse_key_ring(ring_text(active="k1", keys={"k1": B64_1}, redaction_key=B64_2), "r")
    shown = repr(ring) + repr(ring.active) + str(ring)
    for secret in (ring.active.seal_key, ring.active.secret_key, ring.redaction_key or b""):
        assert secret.hex() not in shown and repr(secret) not in shown
    assert "k1" in shown


def test_the_ring_is_immutable() -> None:
    ring = parse_key_ring(ring_text(active="k1", keys={"k1": B64_1}), "r")
    with pytest.raises(TypeError):
        ring.keys["k9"] = ring.active  # type: ignore[index]


def test_a_ring_whose_active_key_is_not_in_it_cannot_be_built() -> None:
    stray = derive_gateway_key("k1", MASTER_1)
    with pytest.raises(ValueError):
        KeyRing(active=stray, keys={"k2": derive_gateway_key("k2", MASTER_2)})
    with pytest.raises(ValueError):
        KeyRing(active=stray, keys={"k1": stray, "k3": derive_gateway_key("k2", MASTER_2)})


def test_every_problem_is_reported_at_once_and_no_key_material_is_shown() -> None:
    short = base64.b64encode(b"s" * 31).decode()
    material = base64.b64encode(os.urandom(32)).decode()
    text = ring_text(active="k9", keys={"k1": short, "k2": "not base64!", "k3": 7, material: B64_1, "k4": B64_2,
                                        "k5": B64_2},
                     redaction_key="@@@", extra=1)
    messages = problems_of(text)
    assert len(messages) == 8, messages
    joined = "\n".join(messages)
    for expected in ("key 'k1' has 31 bytes", "key 'k2' is not valid base64", "key 'k3' must be a base64 string",
                     "key ids must be 1 to 16 letters or digits", "key 'k5' is the same key as 'k4'",
                     '"redaction_key" is not valid base64', "unknown key 'extra'",
                     """"active" names 'k9', which is not in "keys\""""):
        assert expected in joined
    for secret in (short, material, B64_1, B64_2, "@@@", "not base64!"):
        assert secret not in joined


def test_problems_point_at_the_line_of_the_key_they_are_about() -> None:
    text = '{\n  "active": "k1",\n  "keys": {\n    "k1": "%s",\n    "k2": "short"\n  }\n}' % B64_1
    with pytest.raises(ConfigError) as caught:
        parse_key_ring(text, "ring.json")
    (problem,) = caught.value.problems
    assert problem.line == 5 and "'k2'" in problem.message


def test_a_json_syntax_error_carries_its_line() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_key_ring('{\n  "active": "k1",\n  "keys": {"k1": "%s",}\n}' % B64_1, "ring.json")
    (problem,) = caught.value.problems
    assert problem.line == 3 and "JSON syntax error" in problem.message and B64_1 not in str(caught.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("[]", 'key ring must be a JSON object'),
    ("{}", '"keys" is missing'),
    (ring_text(active="k1", keys={}), '"keys" must hold at least one key'),
    (ring_text(active="k1", keys=[B64_1]), '"keys" must be an object'),
    (ring_text(keys={"k1": B64_1}), '"active" is missing'),
    (ring_text(active=1, keys={"k1": B64_1}), '"active" must be a key id'),
    (ring_text(active="k-1", keys={"k1": B64_1}), '"active" must be a key id'),
    (ring_text(active="k1", keys={"k" * 17: B64_1}), "key ids must be 1 to 16 letters or digits"),
    (ring_text(active="k1", keys={"k1": base64.urlsafe_b64encode(b"\xfb" * 32).decode()}), "not valid base64"),
    (ring_text(active="k1", keys={"k1": B64_1 + "\n"}), "not valid base64"),
    (ring_text(active="k1", keys={"k1": B64_1}, redaction_key=base64.b64encode(b"r" * 16).decode()),
     '"redaction_key" has 16 bytes'),
    ('{"active": "k1", "active": "k1", "keys": {"k1": "%s"}}' % B64_1, "'active' appears more than once"),
    ('{"active": "k1", "keys": {"k1": "%s", "k1": "%s"}}' % (B64_1, B64_2), "'k1' appears more than once"),
    ('{"active": "k1", "keys": {"k1": "%s"}, "%s": 1}' % (B64_1, B64_2), "an unknown key"),
])
def test_each_malformed_ring_is_refused(text: str, expected: str) -> None:
    messages = problems_of(text)
    assert any(expected in m for m in messages), messages
    assert B64_2 not in "".join(messages)


def test_the_environment_variable_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    path.write_text(ring_text(active="file", keys={"file": B64_1}))
    path.chmod(0o600)
    ring = load_key_ring(path, {ENV_GATEWAY_KEYS: ring_text(active="env", keys={"env": B64_2})})
    assert ring.active.key_id == "env"
    assert load_key_ring(path, {}).active.key_id == "file"


def test_problems_in_the_environment_variable_name_it() -> None:
    with pytest.raises(ConfigError) as caught:
        load_key_ring(None, {ENV_GATEWAY_KEYS: ring_text(active="k1", keys={"k1": "short"})})
    assert caught.value.problems[0].file == "$IDGATE_GATEWAY_KEYS"


def test_an_empty_environment_variable_does_not_fall_back_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    path.write_text(ring_text(active="k1", keys={"k1": B64_1}))
    with pytest.raises(ConfigError) as caught:
        load_key_ring(path, {ENV_GATEWAY_KEYS: ""})
    assert caught.value.problems[0].file == "$IDGATE_GATEWAY_KEYS"


def test_neither_source_is_an_error_naming_both() -> None:
    with pytest.raises(ConfigError) as caught:
        load_key_ring(None, {})
    assert "$IDGATE_GATEWAY_KEYS" in str(caught.value) and "gateway key file" in str(caught.value)


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo"])
def test_an_unreadable_file_is_an_error_with_its_path(tmp_path: Path, kind: str) -> None:
    # chmod 000 does not stop root (tests may run as root); a directory or a FIFO is unreadable for anyone.
    path = tmp_path / "ring.json"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(ConfigError) as caught:
        load_key_ring(path, {})
    (problem,) = caught.value.problems
    assert problem.file == str(path) and problem.message.startswith("cannot read")


def test_a_file_open_to_others_is_loaded_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ring.json"
    path.write_text(ring_text(active="k1", keys={"k1": B64_1}))
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="idgate.aws.gateway_keys"):
        load_key_ring(path, {})
    assert not caplog.records
    path.chmod(0o640)
    with caplog.at_level(logging.WARNING, logger="idgate.aws.gateway_keys"):
        assert load_key_ring(path, {}).active.key_id == "k1"
    (record,) = caplog.records
    assert str(path) in record.getMessage() and "640" in record.getMessage() and B64_1 not in record.getMessage()


def test_an_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    path.write_text(" " * (64 * 1024 + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_key_ring(path, {})


def test_a_new_ring_loads_with_an_active_key_and_a_redaction_key() -> None:
    counter = itertools.count()
    text = new_key_ring_text("k7", random=lambda n: bytes([next(counter)]) * n)
    doc = json.loads(text)
    assert doc == {"active": "k7", "keys": {"k7": base64.b64encode(b"\x00" * 32).decode()},
                   "redaction_key": base64.b64encode(b"\x01" * 32).decode()}
    ring = parse_key_ring(text, "new")
    assert ring.active == derive_gateway_key("k7", b"\x00" * 32) and ring.redaction_key is not None


def test_new_rings_are_random() -> None:
    assert new_key_ring_text() != new_key_ring_text()
    assert parse_key_ring(new_key_ring_text(), "new").active.key_id == "k1"


@pytest.mark.parametrize("key_id", ["", "k_1", "k" * 17, "é"])
def test_a_new_ring_needs_a_valid_key_id(key_id: str) -> None:
    assert not KEY_ID.fullmatch(key_id)
    with pytest.raises(ValueError):
        new_key_ring_text(key_id)


def test_gateway_key_equality_ignores_the_aead_object() -> None:
    assert derive_gateway_key("k1", MASTER_1) == GatewayKey("k1", derive_gateway_key("k1", MASTER_1).seal_key,
                                                            derive_gateway_key("k1", MASTER_1).secret_key)
