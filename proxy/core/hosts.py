"""Host names and addresses as idgate accepts them: pure checks shared by config, policy and edges."""

from __future__ import annotations

import ipaddress
import re

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
