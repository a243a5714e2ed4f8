"""Request-target splitting and path normalization (DESIGN §3, §10): the one canonical path that both the
policy engine matches and the upstream receives, or a BadRequest with a reason code.  Pure.

Normalization, in order (RFC 3986 §6.2.2 plus idgate's refusals):
  * raw characters: `;` is refused (path parameters: Tomcat/Spring read `/admin;x/` as `/admin/`), a raw
    backslash is refused, controls / space / non-ASCII / `?` / `#` are refused, and the characters RFC 3986
    does not allow raw (`"<>[]^`{|}` and backtick) are percent-encoded so each has one spelling;
  * escapes: malformed ones (`%zz`, a trailing `%`) are refused; escapes of unreserved characters
    (ALPHA DIGIT - . _ ~) are decoded; `%2F` and `%5C` are refused (an upstream would split on them), as are
    encoded NUL and other controls; every other escape is kept with upper-case hex (`%3b` -> `%3B`, a
    literal, never a path parameter); an escaped escape (`%25` + two hex digits, also when it only
    appears after decoding) is refused, because an upstream that decodes twice would see another path;
  * the fully decoded path must be valid UTF-8 (so overlong forms such as `%C0%AF` are refused);
  * `.` and `..` segments are resolved after decoding (so `%2e%2e` and `.%2E` count) with RFC 3986
    `remove_dot_segments` semantics: an empty segment is a segment, so `/a//../b` is `/a/b` as an
    upstream resolves it, never `/b`; a `..` above the root is refused; only then are `//` runs merged,
    and a trailing slash is kept.
"""

from __future__ import annotations

import re

from proxy.core.errors import BadRequest
from proxy.core.reasons import Reason

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEXDIGITS = frozenset("0123456789abcdefABCDEF")

# Printable ASCII without `#`: what an origin-form request-target may contain at all.
_TARGET_BAD = re.compile(r"[^\x21-\x22\x24-\x7e]")
# Fast path: only pchar characters that need no work, and no `%`, `;`, `\`.
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,=:@/]*")
# Anything outside pchar + `/` + `%` needs a closer look in the slow path.
_RAW_SPECIAL = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,=:@/%]")
# Allowed in a path only percent-encoded; encoding them gives each one spelling instead of two.
_ENCODE_RAW = frozenset('"<>[]^`{|}')


def split_target(raw_target: str) -> tuple[str, str]:
    """Split an origin-form request-target (path and query, as on the request line) into (raw_path, query).

    Absolute-form and asterisk-form targets, fragments and bytes outside printable ASCII are refused.
    """
    if not raw_target.startswith("/"):
        raise BadRequest("request target must be an absolute path", reason=Reason.NOT_ORIGIN_FORM)
    bad = _TARGET_BAD.search(raw_target)
    if bad is not None:
        if bad.group() == "#":
            raise BadRequest("fragment in request target", reason=Reason.FRAGMENT)
        raise BadRequest("invalid character in request target", reason=Reason.INVALID_CHARACTER)
    path, _, query = raw_target.partition("?")
    return path, query


def normalize_path(raw_path: str) -> str:
    """Return the canonical form of a raw (still percent-encoded) path; see the module docstring."""
    if (
        _PLAIN_PATH.fullmatch(raw_path) is not None
        and "//" not in raw_path
        and "/." not in raw_path
    ):
        return raw_path  # the common case: nothing to decode, merge or resolve
    if not raw_path.startswith("/"):
        raise BadRequest("path must start with '/'", reason=Reason.NOT_ABSOLUTE_PATH)
    if _RAW_SPECIAL.search(raw_path) is not None:
        raw_path = _canonical_raw_characters(raw_path)

    stack: list[str] = []
    raw_segments = raw_path.split("/")
    last = len(raw_segments) - 1
    for index, raw_segment in enumerate(raw_segments[1:], start=1):
        segment = _decode_segment(raw_segment) if "%" in raw_segment else raw_segment
        if segment == ".":
            if index == last:
                stack.append("")          # `/a/.` ends in a directory, as `/a/` does
        elif segment == "..":
            if not stack:
                raise BadRequest("path climbs above the root", reason=Reason.PATH_TRAVERSAL)
            stack.pop()                   # an empty segment too: `/a//..` is `/a/`
            if index == last:
                stack.append("")
        else:
            stack.append(segment)         # "" included: `//` is merged only once dots are resolved
    merged = [segment for segment in stack if segment]
    if not merged:
        return "/"
    return "/" + "/".join(merged) + ("/" if stack[-1] == "" else "")


def _canonical_raw_characters(raw_path: str) -> str:
    """Refuse raw characters that change meaning downstream; encode those that merely need encoding."""
    out: list[str] = []
    for char in raw_path:
        if char == ";":
            raise BadRequest("path parameters (';') are not accepted", reason=Reason.PATH_PARAMS)
        if char == "\\":
            raise BadRequest("backslash in path", reason=Reason.BACKSLASH)
        if char in _ENCODE_RAW:
            out.append(f"%{ord(char):02X}")
        elif _RAW_SPECIAL.fullmatch(char) is None:
            out.append(char)
        else:
            raise BadRequest("invalid character in path", reason=Reason.INVALID_CHARACTER)
    return "".join(out)


_DOUBLE_ESCAPE = re.compile(r"%25[0-9A-Fa-f]{2}")


def _decode_segment(raw_segment: str) -> str:
    """Decode unreserved escapes and upper-case the rest; the decoded segment must be UTF-8."""
    parts = raw_segment.split("%")
    out = [parts[0]]
    has_high = False
    for part in parts[1:]:
        hex_pair = part[:2]
        if len(hex_pair) != 2 or not _HEXDIGITS.issuperset(hex_pair):
            raise BadRequest("malformed percent-escape in path", reason=Reason.BAD_ESCAPE)
        byte = int(hex_pair, 16)
        if byte in _UNRESERVED:
            out.append(chr(byte))
        elif byte == 0x2F:
            raise BadRequest("encoded slash in path", reason=Reason.ENCODED_SLASH)
        elif byte == 0x5C:
            raise BadRequest("encoded backslash in path", reason=Reason.ENCODED_BACKSLASH)
        elif byte == 0x00:
            raise BadRequest("encoded NUL in path", reason=Reason.NUL)
        elif byte < 0x20 or byte == 0x7F:
            raise BadRequest("encoded control character in path", reason=Reason.CONTROL_CHAR)
        else:
            out.append(f"%{byte:02X}")
            has_high = has_high or byte >= 0x80
        out.append(part[2:])
    segment = "".join(out)
    if _DOUBLE_ESCAPE.search(segment):
        # An escape of an escape (also one that only appears once unreserved escapes are decoded, as in
        # %25%32%46): an upstream that decodes twice would see a %2F or %2E%2E idgate never authorized.
        raise BadRequest("double percent-encoding in path", reason=Reason.DOUBLE_ENCODING)
    if has_high:
        _check_utf8(parts)
    return segment


def _check_utf8(parts: list[str]) -> None:
    """Checked per segment, including segments a later `..` removes: only escapes carry non-ASCII bytes
    (raw ones were refused), and a multi-byte sequence cannot legitimately span a `/`."""
    data = bytearray(parts[0].encode("ascii"))
    for part in parts[1:]:
        data.append(int(part[:2], 16))
        data += part[2:].encode("ascii")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("path is not valid UTF-8", reason=Reason.INVALID_UTF8) from None
