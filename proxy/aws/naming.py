"""What idgate tells STS about the caller: RoleSessionName / SourceIdentity derived from the subject,
session tags, and the parameter limits STS enforces but botocore does not check.  Pure."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from proxy.core.errors import AccessDenied
from proxy.core.reasons import Reason
from proxy.policy.session_policy import MAX_SESSION_POLICY_CHARS

MIN_DURATION, MAX_DURATION = 900, 43200          # DurationSeconds (botocore checks only the minimum)
NAME_MIN, NAME_MAX = 2, 64                       # RoleSessionName and SourceIdentity
MAX_TAGS, MAX_TAG_KEY, MAX_TAG_VALUE = 50, 128, 256
TAG_ISSUER, TAG_SUBJECT = "idgate:issuer", "idgate:subject"

_NOT_NAME_CHAR = re.compile(r"[^\w+=,.@-]", re.ASCII)
_NAME = re.compile(r"[\w+=,.@-]{2,64}", re.ASCII)
_HASH_CHARS = 16                                 # 64 bits of SHA-256 over (issuer, subject)
_TAG_PUNCTUATION = frozenset(" _.:/=+-@")


@dataclass(frozen=True, slots=True)
class SessionIdentity:
    """How one caller appears in CloudTrail: the same values every time for the same (issuer, subject)."""

    session_name: str
    source_identity: str
    tags: tuple[tuple[str, str], ...]


def session_name(issuer: str, subject: str) -> str:
    """A readable prefix of the subject plus a hash of (issuer, subject): stable, and two subjects that
    sanitize alike (or one subject at two issuers) still get different names."""
    digest = hashlib.sha256(f"{issuer}\x00{subject}".encode()).hexdigest()[:_HASH_CHARS]
    readable = _NOT_NAME_CHAR.sub("-", subject)[: NAME_MAX - _HASH_CHARS - 1]
    return f"{readable or 'idgate'}-{digest}"


def tag_value(value: str) -> str:
    """A session-tag value: letters, digits, spaces and `_.:/=+-@` only, at most 256 characters."""
    cleaned = "".join(c if c.isalnum() or c in _TAG_PUNCTUATION else "_" for c in value)
    return cleaned[:MAX_TAG_VALUE]


def session_identity(issuer: str, subject: str, *, tags: bool) -> SessionIdentity:
    name = session_name(issuer, subject)
    tag_pairs = ((TAG_ISSUER, tag_value(issuer)), (TAG_SUBJECT, tag_value(subject))) if tags else ()
    return SessionIdentity(session_name=name, source_identity=name, tags=tag_pairs)


def check_request(who: SessionIdentity, policy: str, duration: int) -> None:
    """Refuse, before calling STS, what STS would refuse and botocore lets through."""
    problems = []
    if not MIN_DURATION <= duration <= MAX_DURATION:
        problems.append(f"duration must be {MIN_DURATION}..{MAX_DURATION} seconds")
    for what, value in (("session name", who.session_name), ("source identity", who.source_identity)):
        if not _NAME.fullmatch(value):
            problems.append(f"{what} must be {NAME_MIN}..{NAME_MAX} characters of [\\w+=,.@-]")
    if who.source_identity.lower().startswith("aws:"):
        problems.append("source identity must not start with 'aws:'")
    if len(who.tags) > MAX_TAGS:
        problems.append(f"at most {MAX_TAGS} session tags")
    if any(not 1 <= len(k) <= MAX_TAG_KEY or len(v) > MAX_TAG_VALUE for k, v in who.tags):
        problems.append("session tag key or value too long")
    if len(policy) > MAX_SESSION_POLICY_CHARS:
        problems.append(f"session policy over {MAX_SESSION_POLICY_CHARS} characters")
    if problems:
        raise AccessDenied("idgate cannot build a valid STS request: " + "; ".join(problems),
                           reason=Reason.INVALID_STS_REQUEST)
