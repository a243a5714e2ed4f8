"""An application that resolves the raw request path the way common servers do (RFC 3986
remove_dot_segments, where an empty segment is a segment), for tests of what a fronting proxy forwards."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from aiohttp import web

_UNRESERVED_ESCAPE = re.compile(r"%(2[dDeE]|5[fF]|7[eE]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA])")


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 as written, after decoding escapes of unreserved characters (§6.2.2.2)."""
    source = _UNRESERVED_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), path)
    output = ""
    while source:
        if source.startswith(("../", "./")):
            source = source.split("/", 1)[1]
        elif source.startswith("/./") or source == "/.":
            source = "/" + source[3:]
        elif source.startswith("/../") or source == "/..":
            source = "/" + source[4:]
            output = output[: output.rfind("/")] if "/" in output else ""
        elif source in (".", ".."):
            source = ""
        else:
            end = source.find("/", 1)
            segment, source = (source, "") if end == -1 else (source[:end], source[end:])
            output += segment
    return output


@dataclass
class Received:
    raw_path: str
    resolved: str
    headers: dict[str, str]


@dataclass
class ResolvingApp:
    """Serves its admin area under /admin and everything else as orders, and remembers every request."""

    received: list[Received] = field(default_factory=list)

    def app(self) -> web.Application:
        async def serve(request: web.Request) -> web.Response:
            resolved = remove_dot_segments(request.raw_path.split("?", 1)[0])
            self.received.append(Received(request.raw_path, resolved, dict(request.headers)))
            return web.Response(text="ADMIN AREA" if resolved.startswith("/admin") else f"orders: {resolved}")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", serve)
        return app
