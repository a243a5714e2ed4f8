"""The HTTP endpoint index behind the policy engine: host → method → path-segment trie, mapping a request
to the set of rule numbers whose http grants cover it, without looking at every rule.  Pure.

Pattern semantics (paths are compared after proxy.core.paths normalization, case-sensitively):
  * a literal segment matches itself; `*` matches exactly one non-empty segment;
  * `**` may only be the last segment and matches zero or more segments, so `/v1/orders/**` covers
    `/v1/orders` itself as well as everything below it.  This is deliberate: with "one or more", a deny
    rule `/admin/**` would leave `/admin` open, which most applications serve as the admin index;
  * a trailing slash never changes what matches (`/a/` is matched like `/a`), for the same reason;
  * hosts match exactly (lower-case, a trailing dot ignored) or by `*.example.com`, which covers exactly
    one extra label (`a.example.com`, not `example.com` nor `a.b.example.com`); no hosts = any host;
  * methods match exactly after upper-casing; no methods = any method.  HEAD is not implied by GET.
"""

from __future__ import annotations

from collections.abc import Iterable


class _Node:
    """One trie level.  `terminal` rules end exactly here; `globstar` rules cover here and below."""

    __slots__ = ("children", "star", "terminal", "globstar")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.star: _Node | None = None
        self.terminal: tuple[int, ...] = ()
        self.globstar: tuple[int, ...] = ()

    def insert(self, segments: tuple[str, ...], payload: int) -> None:
        node = self
        for segment in segments:
            if segment == "**":  # pattern_problem guarantees it is the last segment
                node.globstar += (payload,)
                return
            if segment == "*":
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                node = node.children.setdefault(segment, _Node())
        node.terminal += (payload,)

    def collect(self, segments: list[str], position: int, out: set[int]) -> None:
        """Add every payload whose pattern matches `segments[position:]` to `out`.

        Recursion depth is bounded by the deepest pattern, not by the request path.
        """
        if self.globstar:
            out.update(self.globstar)
        if position == len(segments):
            if self.terminal:
                out.update(self.terminal)
            return
        child = self.children.get(segments[position])
        if child is not None:
            child.collect(segments, position + 1, out)
        if self.star is not None:
            self.star.collect(segments, position + 1, out)


_Entry = tuple[tuple[str, ...], tuple[str, ...], int]   # (methods, path segments, payload)
Pattern = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], int]   # (hosts, methods, segments, payload)


def _trie(entries: Iterable[_Entry]) -> _Node:
    root = _Node()
    for _, segments, payload in entries:
        root.insert(segments, payload)
    return root


class _HostBucket:
    """The patterns of one host key: one trie per listed method, each also holding the any-method
    patterns, so a request walks a single trie per bucket; `other` serves methods no rule lists."""

    __slots__ = ("by_method", "other")

    def __init__(self, entries: list[_Entry]) -> None:
        methods = {method for listed, _, _ in entries for method in listed}
        self.by_method = {m: _trie(e for e in entries if not e[0] or m in e[0]) for m in methods}
        self.other = _trie(e for e in entries if not e[0])

    def trie(self, method: str) -> _Node:
        return self.by_method.get(method, self.other)


class HttpIndex:
    """Maps (method, host, path) to the payloads (rule numbers) of every grant that covers it."""

    __slots__ = ("_exact", "_wildcard", "_any_host")

    def __init__(self, patterns: Iterable[Pattern]) -> None:
        """Each pattern was checked by host_problem and pattern_problem; hosts are canonical."""
        exact: dict[str, list[_Entry]] = {}
        wildcard: dict[str, list[_Entry]] = {}      # keyed by the suffix after "*."
        any_host: list[_Entry] = []
        for hosts, methods, segments, payload in patterns:
            entry = (methods, segments, payload)
            if not hosts:
                any_host.append(entry)
            for host in hosts:
                if host.startswith("*."):
                    wildcard.setdefault(host[2:], []).append(entry)
                else:
                    exact.setdefault(host, []).append(entry)
        # An exact host also carries the wildcard patterns that cover it: one bucket per request, not two.
        self._exact = {
            host: _HostBucket(entries + wildcard.get(_wildcard_suffix(host), []))
            for host, entries in exact.items()
        }
        self._wildcard = {suffix: _HostBucket(entries) for suffix, entries in wildcard.items()}
        self._any_host = _HostBucket(any_host) if any_host else None

    def lookup(self, method: str, host: str, path: str) -> set[int]:
        """Payloads covering the request; `host` and `method` as from canonical_host / upper-case."""
        found: set[int] = set()
        bucket = self._exact.get(host)
        if bucket is None and self._wildcard:
            bucket = self._wildcard.get(_wildcard_suffix(host))
        if bucket is None and self._any_host is None:
            return found
        segments = path_segments(path)
        if bucket is not None:
            bucket.trie(method).collect(segments, 0, found)
        if self._any_host is not None:
            self._any_host.trie(method).collect(segments, 0, found)
        return found


def _wildcard_suffix(host: str) -> str:
    """The key a `*.suffix` pattern is filed under for `host`: all but the first label ("" if none)."""
    return host.partition(".")[2]


def path_segments(path: str) -> list[str]:
    """Segments of a normalized path; empty segments (a trailing slash, a stray `//`) do not count."""
    return [segment for segment in path.split("/") if segment]


def canonical_host(host: str) -> str:
    """Hosts compare lower-case and without the DNS root dot (`orders.internal.` is `orders.internal`)."""
    host = host.lower()
    return host[:-1] if host.endswith(".") else host


def host_problem(host: str) -> str | None:
    """Why a grant's host entry is unusable, or None.  Only a leading `*.` label is a wildcard."""
    if not host:
        return "empty host"
    if host == "*":
        return "host '*' is not a pattern: leave hosts empty to match any host"
    wildcard = host.startswith("*.")
    rest = host[2:] if wildcard else host
    if "*" in rest or not rest or rest.startswith("."):
        return "a host wildcard must be a whole leading label, as in '*.example.com'"
    return None


def pattern_problem(segments: tuple[str, ...]) -> str | None:
    """Why a path pattern (split into segments) is unusable, or None."""
    for position, segment in enumerate(segments):
        if segment == "**":
            if position != len(segments) - 1:
                return "'**' may only be the last segment of a path pattern"
        elif segment != "*" and "*" in segment:
            return "'*' and '**' must be whole path segments"
    return None
