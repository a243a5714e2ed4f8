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


def test_encoded_slash_is_refused() -> None:
    assert refusal("/public/..%2Fadmin") == "encoded_slash"
    assert refusal("/public%2f..%2fadmin") == "encoded_slash"


def test_encoded_backslash_is_refused() -> None:
    assert refusal("/public/..%5cadmin") == "encoded_backslash"
    assert refusal("/public/..%5Cadmin") == "encoded_backslash"


def test_raw_backslash_is_refused() -> None:
    assert refusal("/public/..\\admin") == "backslash"


def test_double_slash_is_merged() -> None:
    assert canonical("//admin") == "/admin"
    assert canonical("/public//..//admin") == "/admin"
    assert decide("//admin/users").rule_id == "nobody-touches-admin"


def test_path_parameters_are_refused() -> None:
    assert refusal("/admin;x") == "path_params"
    assert refusal("/admin;x/users") == "path_params"
    assert refusal("/public/..;/admin") == "path_params"


def test_encoded_semicolon_stays_a_literal() -> None:
    assert canonical("/public/a%3bb") == "/public/a%3Bb"
    assert decide("/public/a%3bb").rule_id == "public-read"


def test_query_never_takes_part_in_the_path() -> None:
    assert split_target("/public?x=/../admin") == ("/public", "x=/../admin")
    assert canonical("/public?x=/../admin") == "/public"
    assert decide("/public?x=/../admin").rule_id == "public-read"


def test_fragment_is_refused() -> None:
    assert refusal("/admin#/public") == "fragment"
    assert refusal("/public/#") == "fragment"


def test_encoded_nul_is_refused() -> None:
    assert refusal("/%00") == "nul"
    assert refusal("/admin%00.html") == "nul"


def test_encoded_control_character_is_refused() -> None:
    assert refusal("/admin%0d%0aX-Injected:1") == "control_char"


def test_overlong_utf8_slash_is_refused() -> None:
    assert refusal("/public/..%C0%AFadmin") == "invalid_utf8"
    assert refusal("/%C0%AF") == "invalid_utf8"


def test_invalid_utf8_byte_is_refused() -> None:
    assert refusal("/%FF") == "invalid_utf8"


def test_dot_dot_above_the_root_is_refused() -> None:
    assert refusal("/../") == "path_traversal"
    assert refusal("/public/../../etc/passwd") == "path_traversal"
    assert refusal("/%2e%2e/admin") == "path_traversal"


def test_absolute_form_target_is_refused() -> None:
    assert refusal("http://other/x") == "not_origin_form"
    assert refusal("*") == "not_origin_form"


def test_raw_space_and_non_ascii_are_refused() -> None:
    assert refusal("/admin /x") == "invalid_character"
    assert refusal("/\u0430dmin") == "invalid_character"      # Cyrillic a


def test_encoded_unreserved_characters_are_decoded() -> None:
    assert canonical("/%7e") == "/~"
    assert canonical("/%41") == "/A"


def test_encoded_letters_cannot_dodge_a_deny() -> None:
    assert canonical("/%61dmin/users") == "/admin/users"
    assert decide("/%61%64%6D%69%6E/users").rule_id == "nobody-touches-admin"


def test_other_escapes_are_upper_cased_not_decoded() -> None:
    assert canonical("/public/a%2ab%c3%a9") == "/public/a%2Ab%C3%A9"


def test_malformed_escape_is_refused() -> None:
    assert refusal("/public/%zz") == "bad_escape"
    assert refusal("/public/%") == "bad_escape"


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
