"""Host names and addresses as idgate accepts them: pure checks shared by config, policy and edges."""

from __future__ import annotations

import functools
import ipaddress
import re

from proxy.core.errors import BadRequest
from proxy.core.reasons import Reason

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")


def is_host_name(value: str) -> bool:
    """A lower-case DNS name (underscores tolerated for container names) or an IPv4 literal; no port."""
    return _HOST_NAME.fullmatch(value) is not None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# A name or a bracketed IP literal, one optional trailing dot (the root), an optional port.
_HOST = re.compile(rf"(?P<name>(?=[^:]{{1,253}}(?:\.?(?::|\Z))){_LABEL}(?:\.{_LABEL})*|\[[0-9a-f:.]{{2,45}}\])"
                   r"\.?(?::(?P<port>[0-9]{1,5}))?")


@functools.lru_cache(maxsize=1024)     # on every request, over the few hosts a deployment serves
def parse_host(value: str) -> str:
    """A Host header value → its canonical host: lower case, no trailing dot, no port; or BadRequest
    (a refusal is never cached)."""
    match = _HOST.fullmatch(value.strip().lower())
    port = match.group("port") if match is not None else None
    if match is None or (port is not None and int(port) > 65535):
        raise BadRequest("invalid Host header", reason=Reason.BAD_HOST)
    return match.group("name")
