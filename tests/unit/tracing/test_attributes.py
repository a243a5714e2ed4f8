"""The caller on a span: a keyed pseudonym (stable under one key, unlinkable across keys), the subject only
when configured, roles bounded in number and length."""

from __future__ import annotations

import hashlib
import hmac

from proxy.core.model import AccessRequest, Surface
from proxy.tracing.attributes import IdentityAttributes, http_method, request_attributes
from tests.factories import make_identity


def test_the_pseudonym_is_an_hmac_of_issuer_and_subject_under_the_key() -> None:
    key = b"k" * 32
    attributes = IdentityAttributes(key, export_subject=False, max_roles=16).of("https://iss", "alice", ())
    expected = hmac.new(key, b"https://iss\0alice", hashlib.sha256).hexdigest()[:32]
    assert attributes == {"enduser.pseudo.id": expected}
    other_key = IdentityAttributes(b"j" * 32, export_subject=False, max_roles=16).of("https://iss", "alice", ())
    assert other_key["enduser.pseudo.id"] != expected
    # issuer NUL subject: ("a", "bc") and ("ab", "c") are different callers
    split = IdentityAttributes(key, export_subject=False, max_roles=16)
    assert split.of("a", "bc", ())["enduser.pseudo.id"] != split.of("ab", "c", ())["enduser.pseudo.id"]


def test_the_subject_only_when_configured_and_roles_bounded() -> None:
    groups = tuple(f"g{i}" for i in range(40)) + ("x" * 500,)
    attributes = IdentityAttributes(b"k" * 32, export_subject=True, max_roles=41).of("iss", "alice", groups)
    assert attributes["enduser.id"] == "alice"
    assert len(attributes["user.roles"]) == 41 and attributes["user.roles"][-1] == "x" * 128
    assert "user.roles" not in IdentityAttributes(b"k" * 32, export_subject=False, max_roles=0).of("i", "s", ("a",))
    assert IdentityAttributes(b"k" * 32, export_subject=False, max_roles=2).of("i", "s", ("a", "b", "c"))["user.roles"] \
        == ("a", "b")


def test_an_identity_with_lone_surrogates_still_gets_a_pseudonym() -> None:
    identity = make_identity(subject="\ud800")
    attributes = IdentityAttributes(b"k" * 32, export_subject=False, max_roles=1).of(identity.issuer, identity.subject, ())
    assert len(attributes["enduser.pseudo.id"]) == 32


def test_http_attributes_name_unknown_methods_other() -> None:
    assert (http_method("GET"), http_method("PROPFIND"), http_method("X" * 16)) == ("GET", "_OTHER", "_OTHER")


def test_request_attributes_are_capped_like_the_audit() -> None:
    access = AccessRequest(Surface.PROXY, "rid-12345678", "GET", "h" * 400, "/" + "p" * 2000, "127.0.0.1")
    attributes = request_attributes(access)
    assert len(attributes["url.path"]) == 768 and len(attributes["server.address"]) == 255
