"""Where a login may send the browser back to: a path on this host, nothing else.

oauth2-proxy's advisories are the catalogue of what goes wrong when a return URL is checked loosely: a
scheme-relative `//evil`, a backslash that browsers read as a slash (`/\\evil`), an encoded slash or
backslash (`/%2F%2Fevil`, `/%5Cevil`), control characters that browsers strip (`/\\t/evil`), dot segments
that resolve to `//` (`/.//evil`), a `javascript:` or full URL.  Anything that is not plainly a path on
this host becomes `/`.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MAX_RETURN_PATH_CHARS = 2048
DEFAULT = "/"
# RFC 3986 path, query and fragment characters, percent escapes included; no space, backslash or control.
_PLAIN = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@%/?#]*", re.ASCII)


def safe_return_path(candidate: str | None) -> str:
    """`candidate` when it is a plain absolute path on this host, else `/`."""
    if not candidate or len(candidate) > MAX_RETURN_PATH_CHARS or not _PLAIN.fullmatch(candidate):
        return DEFAULT
    # Decoded as many times as anything on the way might decode it, the start must still be one slash
    # followed by something that is neither a slash nor a backslash.
    decoded = candidate
    for _ in range(3):
        if not decoded.startswith("/") or decoded.startswith("//") or "\\" in decoded \
                or any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded) or _resolves_to_double_slash(decoded):
            return DEFAULT
        following = unquote(decoded)
        if following == decoded:
            break
        decoded = following
    else:
        return DEFAULT   # still decoding after three rounds: nobody writes a return path like that
    return candidate


def _resolves_to_double_slash(path_and_query: str) -> bool:
    """Whether the browser, resolving `.` and `..` (WHATWG URL), lands on a path that starts with `//`: a
    path on this host still, but one that a page redirecting from its own path (a trailing-slash
    redirect, serve-static's CVE-2015-1164) turns into a scheme-relative URL."""
    path = re.split(r"[?#]", path_and_query, maxsplit=1)[0]
    resolved: list[str] = []
    segments = path.split("/")[1:]
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "..":
            if resolved:
                resolved.pop()
            if last:
                resolved.append("")
        elif segment == ".":
            if last:
                resolved.append("")
        else:
            resolved.append(segment)
    return len(resolved) > 1 and resolved[0] == ""
