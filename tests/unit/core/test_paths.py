"""Unit tests for proxy.core.paths: target splitting, normalization results and refusal reasons."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from proxy.core.errors import BadRequest
from proxy.core.paths import normalize_path, split_target


def reason_of(call: Callable[[str], object], value: str) -> str:
    with pytest.raises(BadRequest) as caught:
        call(value)
    assert caught.value.status == 400
    return caught.value.reason


# -- split_target ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/", ("/", "")),
        ("/v1/orders", ("/v1/orders", "")),
        ("/v1/orders?", ("/v1/orders", "")),
        ("/v1/orders?a=1&b=/x?y", ("/v1/orders", "a=1&b=/x?y")),
        ("/a%20b?q=%2F", ("/a%20b", "q=%2F")),
        ("//double", ("//double", "")),
    ],
)
def test_split_target_splits_path_and_query(target: str, expected: tuple[str, str]) -> None:
    assert split_target(target) == expected


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://other/x", "not_origin_form"),
        ("*", "not_origin_form"),
        ("", "not_origin_form"),
        ("orders", "not_origin_form"),
        ("/a#frag", "fragment"),
        ("/a?q#frag", "fragment"),
        ("/a b", "invalid_character"),
        ("/a\tb", "invalid_character"),
        ("/a\x00", "invalid_character"),
        ("/a\x7f", "invalid_character"),
        ("/caf\u00e9", "invalid_character"),
        ("/a?q=\u00e9", "invalid_character"),
        ("/a\udcff", "invalid_character"),   # a non-UTF-8 byte as surrogateescape would deliver it
    ],
)
def test_split_target_refuses(target: str, reason: str) -> None:
    assert reason_of(split_target, target) == reason


# -- normalize_path: results ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("/", "/"),
        ("/v1/orders/7", "/v1/orders/7"),
        ("/v1/orders/", "/v1/orders/"),
        ("/.well-known/jwks.json", "/.well-known/jwks.json"),
        ("/a./b..", "/a./b.."),
        ("/.../x", "/.../x"),
        ("/a/./b", "/a/b"),
        ("/a/b/.", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/a/..", "/"),
        ("/a/../b/../c", "/c"),
        ("/a//b///c", "/a/b/c"),
        ("//", "/"),
        ("/a//", "/a/"),
        ("/%41%62%63", "/Abc"),
        ("/%7e%7E%2D%2d%5F%2E1", "/~~--_.1"),
        ("/a%20b", "/a%20b"),
        ("/a%2ab", "/a%2Ab"),
        ("/%3b", "/%3B"),
        ("/%25", "/%25"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/%F0%9F%98%80", "/%F0%9F%98%80"),
        ("/a/%2e/b", "/a/b"),
        ("/a/%2e%2e/b", "/b"),
        ("/x|y", "/x%7Cy"),
        ('/q"<>[]^`{}', "/q%22%3C%3E%5B%5D%5E%60%7B%7D"),
        ("/sub!$&'()*+,=:@", "/sub!$&'()*+,=:@"),
    ],
)
def test_normalize_path(raw: str, normalized: str) -> None:
    assert normalize_path(raw) == normalized


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("relative", "not_absolute_path"),
        ("", "not_absolute_path"),
        ("/a%2Fb", "encoded_slash"),
        ("/a%2fb", "encoded_slash"),
        ("/a%5Cb", "encoded_backslash"),
        ("/a%5cb", "encoded_backslash"),
        ("/a\\b", "backslash"),
        ("/a%00", "nul"),
        ("/a%0a", "control_char"),
        ("/a%1F", "control_char"),
        ("/a%7f", "control_char"),
        ("/%zz", "bad_escape"),
        ("/%", "bad_escape"),
        ("/a%4", "bad_escape"),
        ("/a%+1", "bad_escape"),
        ("/..", "path_traversal"),
        ("/a/../..", "path_traversal"),
        ("/admin;x", "path_params"),
        ("/admin;x/", "path_params"),
        ("/a;", "path_params"),
        ("/%C0%AF", "invalid_utf8"),
        ("/%FF", "invalid_utf8"),
        ("/%C3", "invalid_utf8"),
        ("/%C3/%A9", "invalid_utf8"),
        ("/%ED%A0%80", "invalid_utf8"),      # a UTF-16 surrogate
        ("/a b", "invalid_character"),
        ("/a?b", "invalid_character"),
        ("/a#b", "invalid_character"),
        ("/caf\u00e9", "invalid_character"),
    ],
)
def test_normalize_path_refuses(raw: str, reason: str) -> None:
    assert reason_of(normalize_path, raw) == reason


def test_invalid_utf8_in_a_removed_segment_is_still_refused() -> None:
    assert reason_of(normalize_path, "/%FF/../a") == "invalid_utf8"


def test_messages_do_not_echo_the_path() -> None:
    secret = "s3cr3t-token-like-segment"
    for raw in (f"/{secret}%2F", f"/{secret};x", f"/{secret}/%FF", f"/{secret}/%zz"):
        with pytest.raises(BadRequest) as caught:
            normalize_path(raw)
        assert secret not in caught.value.message


# -- normalize_path: properties over generated paths --------------------------------------------------------

_PIECES = ("a", "B", "7", ".", "..", "%2e", "%2E", "%41", "%7e", "%20", "%c3%a9", "~", "-", "*", "%3b", "/", "//")


def _generated_paths(count: int) -> list[str]:
    rng = random.Random(20261122)
    return ["/" + "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 8))) for _ in range(count)]


def test_normalized_paths_are_canonical_and_stable() -> None:
    accepted = 0
    for raw in _generated_paths(3000):
        try:
            normalized = normalize_path(raw)
        except BadRequest as exc:
            assert exc.reason == "path_traversal", raw
            continue
        accepted += 1
        assert normalized.startswith("/"), raw
        assert "//" not in normalized, raw
        segments = normalized.split("/")[1:]
        assert "." not in segments and ".." not in segments, raw
        assert normalize_path(normalized) == normalized, raw
        for escape in normalized.split("%")[1:]:
            assert escape[:2] == escape[:2].upper(), raw
            assert escape[:2] not in ("2E", "41", "7E"), raw   # unreserved escapes are always decoded
    assert accepted > 1000  # the generator must exercise the success path, not only refusals
