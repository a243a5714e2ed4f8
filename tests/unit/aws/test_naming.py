"""RoleSessionName / SourceIdentity / session tags derived from the caller, and the STS limits idgate
checks because botocore does not."""

from __future__ import annotations

import re

import pytest

from proxy.aws.naming import (
    MAX_TAG_VALUE,
    SessionIdentity,
    check_request,
    session_identity,
    session_name,
    tag_value,
)
from proxy.core.errors import AccessDenied

STS_NAME = re.compile(r"[\w+=,.@-]{2,64}", re.ASCII)


@pytest.mark.parametrize("subject", [
    "svc-etl-7", "system:serviceaccount:airflow:worker", "a", "ü" * 10, "x" * 500, "aws:admin", "a b/c\\d\"e",
])
def test_session_names_satisfy_sts_and_stay_readable(subject: str) -> None:
    name = session_name("https://issuer", subject)
    assert STS_NAME.fullmatch(name)
    assert not name.lower().startswith("aws:")
    assert name == session_name("https://issuer", subject)             # stable
    if subject.isascii() and subject.replace("-", "").isalnum():
        assert name.startswith(subject[:40])


def test_subjects_that_sanitize_alike_or_share_a_subject_across_issuers_differ() -> None:
    assert session_name("https://i", "a:b") != session_name("https://i", "a/b")
    assert session_name("https://i", "a:b").split("-")[0] == session_name("https://i", "a/b").split("-")[0]
    assert session_name("https://one", "svc") != session_name("https://two", "svc")
    long_a, long_b = "x" * 100 + "a", "x" * 100 + "b"
    assert session_name("https://i", long_a) != session_name("https://i", long_b)


def test_tags_carry_issuer_and_subject_in_tag_charset() -> None:
    who = session_identity("http://127.0.0.1:9400", "svc etl#7<script>", tags=True)
    assert dict(who.tags) == {"idgate:issuer": "http://127.0.0.1:9400", "idgate:subject": "svc etl_7_script_"}
    assert len(tag_value("é" * 1000)) == MAX_TAG_VALUE
    assert session_identity("i", "s", tags=False).tags == ()


def test_check_request_refuses_what_botocore_would_send() -> None:
    good = session_identity("i", "svc", tags=True)
    check_request(good, "{}", 3600)
    for who, policy, duration, fragment in (
        (good, "{}", 43201, "duration"),
        (good, "{}", 899, "duration"),
        (good, "x" * 2049, 3600, "session policy"),
        (SessionIdentity("a" * 65, "ok-name", ()), "{}", 3600, "session name"),
        (SessionIdentity("ok-name", "aws:x", ()), "{}", 3600, "source identity"),
        (SessionIdentity("ok", "ok", tuple((f"k{i}", "v") for i in range(51))), "{}", 3600, "tags"),
    ):
        with pytest.raises(AccessDenied) as caught:
            check_request(who, policy, duration)
        assert caught.value.reason == "invalid_sts_request" and fragment in caught.value.message
