"""safe_return_path: every spelling of an open redirect from oauth2-proxy's advisories and the browsers'
URL-parsing quirks falls back to `/`; a plain path on this host (with its query) is kept verbatim."""

from __future__ import annotations

from urllib.parse import urljoin

import pytest

from proxy.sessions.return_path import DEFAULT, MAX_RETURN_PATH_CHARS, safe_return_path

OPEN_REDIRECTS = {
    # scheme-relative and its disguises (CVE-2020-5233, CVE-2021-21291 class)
    "scheme_relative": "//evil.example",
    "triple_slash": "///evil.example",
    "slash_backslash": "/\\evil.example",
    "backslash_slash": "\\/evil.example",
    "double_backslash": "\\\\evil.example",
    "backslash_only": "\\evil.example",
    # encoded slash and backslash, once and twice (a server or framework on the way decodes again)
    "encoded_slash": "/%2Fevil.example",
    "encoded_slash_lower": "/%2fevil.example",
    "encoded_backslash": "/%5Cevil.example",
    "encoded_backslash_lower": "/%5cevil.example",
    "double_encoded_slash": "/%252Fevil.example",
    "double_encoded_backslash": "/%255Cevil.example",
    "triple_encoded_slash": "/%25252Fevil.example",
    "quadruple_encoded_slash": "/%2525252Fevil.example",
    "both_encoded": "/%2F%2Fevil.example",
    "leading_encoded_slash": "%2F%2Fevil.example",
    # control characters that the URL parser of every browser strips (tab, newline, carriage return)
    "raw_tab": "/\t/evil.example",
    "raw_newline": "/\n/evil.example",
    "raw_cr": "/\r/evil.example",
    "encoded_tab": "/%09/evil.example",
    "encoded_newline": "/%0A/evil.example",
    "encoded_cr": "/%0D/evil.example",
    "double_encoded_tab": "/%2509/evil.example",
    "encoded_nul": "/%00/evil.example",
    "encoded_del": "/%7F/evil.example",
    "header_splitting": "/app%0D%0ASet-Cookie:%20x=y",
    "raw_header_splitting": "/app\r\nSet-Cookie: x=y",
    "raw_space": "/ /evil.example",
    "leading_space": " //evil.example",
    # absolute and pseudo URLs
    "https_url": "https://evil.example/",
    "http_url": "http://evil.example/",
    "scheme_without_slashes": "https:evil.example",
    "javascript": "javascript:alert(1)",
    "javascript_mixed_case": "JaVaScRiPt:alert(1)",
    "javascript_after_slash_encoded": "%2Fjavascript:alert(1)",
    "data_url": "data:text/html,<script>alert(1)</script>",
    "userinfo_url": "//user@evil.example",
    # dot segments that a browser resolves to a path starting with `//`: harmless as a Location, but the
    # page it lands on may build a redirect from its own path (a trailing-slash redirect: serve-static's
    # CVE-2015-1164) and that one is scheme-relative; oauth2-proxy refuses `/./` and `/../` likewise
    "dot_then_double_slash": "/.//evil.example",
    "dotdot_then_double_slash": "/..//evil.example",
    "segment_dotdot_then_double_slash": "/app/..//evil.example",
    "two_segments_back": "/a/b/../..//evil.example",
    "encoded_dot": "/%2e//evil.example",
    "encoded_dotdot": "/%2E%2E//evil.example",
    "dot_encoded_slash": "/.%2F/evil.example",
    "relative_no_slash": "evil.example/path",
    "dot_relative": "./evil",
    "empty": "",
    # unicode: non-ASCII is never plainly a path (fullwidth solidus, division slash, big solidus, ...)
    "fullwidth_solidus": "/\uff0fevil.example",
    "division_slash": "/\u2215evil.example",
    "fraction_slash": "/\u2044evil.example",
    "big_solidus": "/\u29f8evil.example",
    "fullwidth_reverse_solidus": "/\uff3cevil.example",
    "ideographic_full_stop": "/\u3002evil",
    "non_ascii_start": "\uff0f\uff0fevil.example",
    # too long to be a return path anyone writes (and too long for the login cookie)
    "very_long": "/" + "a" * MAX_RETURN_PATH_CHARS,
    "very_long_query": "/app?" + "q" * MAX_RETURN_PATH_CHARS,
}


@pytest.mark.parametrize("candidate", OPEN_REDIRECTS.values(), ids=OPEN_REDIRECTS.keys())
def test_an_open_redirect_spelling_falls_back_to_the_root(candidate):
    assert safe_return_path(candidate) == DEFAULT


def test_none_falls_back_to_the_root():
    assert safe_return_path(None) == DEFAULT


KEPT = [
    "/",
    "/app/page",
    "/app/page?q=1&r=two#frag",
    "/app/a%20b",                       # an encoded space is a path character once decoded
    "/app/%C3%A9t%C3%A9",               # encoded UTF-8 stays encoded: the Location carries no raw non-ASCII
    "/app/user@example.com",            # an @ after the first segment is part of the path
    "/@evil.example",                   # even first: /@host is a path on this host, not userinfo
    "/app/x:y",
    "/./evil.example",
    "/app/../other",
    "/app//x",                          # an empty segment later on is only a path
    "/app/.//x",
    "/app?next=//evil.example",         # a query is not where the browser goes
    "/app#//evil.example",
    "/%E2%88%95evil.example",           # encoded U+2215: still a path segment once decoded
    "/%EF%BC%8Fevil.example",           # encoded U+FF0F likewise
    "/" + "a" * (MAX_RETURN_PATH_CHARS - 1),
]


@pytest.mark.parametrize("candidate", KEPT)
def test_a_plain_path_on_this_host_is_kept_verbatim(candidate):
    assert safe_return_path(candidate) == candidate


@pytest.mark.parametrize("candidate", KEPT)
def test_what_is_kept_resolves_on_this_host(candidate):
    """What a browser does with the Location: every kept path stays on the host that sent it (WHATWG URL
    resolution, as urljoin approximates it for these spellings)."""
    assert urljoin("https://app.example/start", safe_return_path(candidate)).startswith("https://app.example/")


PADDED = {name: value for name, value in OPEN_REDIRECTS.items() if value}


@pytest.mark.parametrize("candidate", PADDED.values(), ids=PADDED.keys())
def test_a_refused_spelling_is_refused_with_any_tail(candidate):
    # Padding a trick with a long but allowed tail changes nothing.
    assert safe_return_path(candidate + "/" + "x" * 100) == DEFAULT
