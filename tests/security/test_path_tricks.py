"""Path tricks against the pure request-target pipeline (split_target → normalize_path → decide_http).
One named test per trick; each asserts the exact outcome: the canonical path, or the refusal reason."""

from __future__ import annotations

import pytest

from proxy.core.errors import BadRequest
from proxy.core.model import Decision
from proxy.core.paths import normalize_path, split_target
from proxy.policy.engine import CompiledPolicy
from proxy.policy.rules import Effect, HttpGrant, Rule, Who
from tests.factories import make_identity

POLICY = CompiledPolicy.compile((
    Rule(id="public-read", who=Who(any=True), http=(HttpGrant(paths=("/public/**",)),)),
    Rule(id="nobody-touches-admin", who=Who(any=True), effect=Effect.DENY, http=(HttpGrant(paths=("/admin/**",)),)),
))


def canonical(target: str) -> str:
    raw_path, _ = split_target(target)
    return normalize_path(raw_path)


def refusal(target: str) -> str:
    with pytest.raises(BadRequest) as caught:
        canonical(target)
    assert caught.value.status == 400
    return caught.value.reason


def decide(target: str) -> Decision:
    return POLICY.decide_http(make_identity(), "GET", "app.internal", canonical(target))


# The tricks the pipeline refuses outright, one named case each: every target of a case gets that reason.
REFUSED = [
    pytest.param("encoded_slash", ("/public/..%2Fadmin", "/public%2f..%2fadmin"), id="encoded_slash"),
    pytest.param("encoded_backslash", ("/public/..%5cadmin", "/public/..%5Cadmin"), id="encoded_backslash"),
    pytest.param("backslash", ("/public/..\\admin",), id="raw_backslash"),
    pytest.param("path_params", ("/admin;x", "/admin;x/users", "/public/..;/admin"), id="path_parameters"),
    pytest.param("fragment", ("/admin#/public", "/public/#"), id="fragment"),
    pytest.param("nul", ("/%00", "/admin%00.html"), id="encoded_nul"),
    pytest.param("control_char", ("/admin%0d%0aX-Injected:1",), id="encoded_control_character"),
    pytest.param("invalid_utf8", ("/public/..%C0%AFadmin", "/%C0%AF"), id="overlong_utf8_slash"),
    pytest.param("invalid_utf8", ("/%FF",), id="invalid_utf8_byte"),
    pytest.param("path_traversal", ("/../", "/public/../../etc/passwd", "/%2e%2e/admin"), id="dot_dot_above_the_root"),
    pytest.param("not_origin_form", ("http://other/x", "*"), id="absolute_form_target"),
    pytest.param("invalid_character", ("/admin /x", "/\u0430dmin"), id="raw_space_and_non_ascii"),   # Cyrillic a
    pytest.param("bad_escape", ("/public/%zz", "/public/%"), id="malformed_escape"),
]


@pytest.mark.parametrize(("reason", "targets"), REFUSED)
def test_trick_is_refused(reason: str, targets: tuple[str, ...]) -> None:
    for target in targets:
        assert refusal(target) == reason, target


def test_policy_baseline() -> None:
    assert decide("/public/index.html").rule_id == "public-read"
    assert decide("/public/index.html").allowed
    assert decide("/admin/users").rule_id == "nobody-touches-admin"
    assert not decide("/admin/users").allowed
    assert decide("/admin").rule_id == "nobody-touches-admin"     # `**` covers the prefix itself
    assert decide("/elsewhere").reasons == ("no_matching_rule",)


def test_dot_dot_out_of_an_allowed_prefix() -> None:
    assert canonical("/public/../admin") == "/admin"
    decision = decide("/public/../admin")
    assert (decision.allowed, decision.rule_id) == (False, "nobody-touches-admin")


def test_encoded_dot_dot_lower_case() -> None:
    assert canonical("/public/%2e%2e/admin/users") == "/admin/users"
    assert decide("/public/%2e%2e/admin/users").rule_id == "nobody-touches-admin"


def test_encoded_dot_dot_mixed_case_with_trailing_slash() -> None:
    assert canonical("/public/%2E%2e/admin/") == "/admin/"
    assert decide("/public/%2E%2e/admin/").rule_id == "nobody-touches-admin"


def test_half_encoded_dot_dot() -> None:
    assert canonical("/public/.%2e/admin") == "/admin"
    assert canonical("/public/%2E./admin") == "/admin"
    assert decide("/public/.%2e/admin").rule_id == "nobody-touches-admin"


def test_single_dot_segments_vanish() -> None:
    assert canonical("/public/./%2e/x") == "/public/x"


def test_double_slash_is_merged() -> None:
    assert canonical("//admin") == "/admin"
    assert decide("//admin/users").rule_id == "nobody-touches-admin"


def test_an_empty_segment_is_a_segment_when_dots_are_resolved() -> None:
    """RFC 3986 remove_dot_segments: `..` after `//` removes the empty segment, as an upstream resolving the
    raw path does; merging `//` first would decide on /admin while the upstream serves /public/admin."""
    assert canonical("/public//..//admin") == "/public/admin"
    assert canonical("/public//../admin") == "/public/admin"
    assert canonical("/a/b//../../c") == "/a/c"
    assert canonical("/a//..") == "/a/"
    assert decide("/public//../admin/users").rule_id == "public-read"


def test_encoded_semicolon_stays_a_literal() -> None:
    assert canonical("/public/a%3bb") == "/public/a%3Bb"
    assert decide("/public/a%3bb").rule_id == "public-read"


def test_query_never_takes_part_in_the_path() -> None:
    assert split_target("/public?x=/../admin") == ("/public", "x=/../admin")
    assert canonical("/public?x=/../admin") == "/public"
    assert decide("/public?x=/../admin").rule_id == "public-read"


def test_encoded_unreserved_characters_are_decoded() -> None:
    assert canonical("/%7e") == "/~"
    assert canonical("/%41") == "/A"


def test_encoded_letters_cannot_dodge_a_deny() -> None:
    assert canonical("/%61dmin/users") == "/admin/users"
    assert decide("/%61%64%6D%69%6E/users").rule_id == "nobody-touches-admin"


def test_other_escapes_are_upper_cased_not_decoded() -> None:
    assert canonical("/public/a%2ab%c3%a9") == "/public/a%2Ab%C3%A9"


def test_trailing_slash_cannot_dodge_a_deny() -> None:
    assert canonical("/admin/") == "/admin/"
    assert decide("/admin/").rule_id == "nobody-touches-admin"


@pytest.mark.parametrize("raw", ["/v1/%252e%252e/admin", "/v1/%252F", "/v1/%25%32%65"])
def test_double_encoding_is_refused(raw):
    with pytest.raises(BadRequest) as err:
        normalize_path(raw)
    assert err.value.reason == "double_encoding"


def test_a_literal_percent_sign_stays_allowed():
    assert normalize_path("/v1/100%25") == "/v1/100%25"
    assert normalize_path("/v1/%25zz") == "/v1/%25zz"
