"""Small checks the config validators share: URLs, IP networks, positive numbers, AWS region names, and
whether an optional extra is installed."""

from __future__ import annotations

import importlib.util
import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from proxy.config.decoder import Spot

AWS_REGION = re.compile(r"[a-z]{2,4}(?:-[a-z]+)+-[0-9]{1,2}")


def http_url_problem(url: str, *, bare: bool) -> str | None:
    """Why `url` is not an http(s) URL with a host (and, when `bare`, nothing after host:port)."""
    try:
        parts = urlsplit(url)
        parts.port   # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    if "@" in parts.netloc:
        return "must not contain user info"
    if bare and (parts.path or parts.query or parts.fragment or url.endswith(("?", "#"))):
        return "must be scheme://host[:port] with no path, query or fragment"
    return None


def path_prefix_problem(prefix: str) -> str | None:
    if not prefix.startswith("/"):
        return "must start with '/'"
    if "//" in prefix or any(c in prefix for c in "?#%;\\") or any(s in (".", "..") for s in prefix.split("/")):
        return "must be a normalized path: no '//', '.', '..', '?', '#', '%', ';' or '\\'"
    return None


def check_positive(obj: Any, spot: Spot, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            spot.report("must be greater than 0", name)


def cidr_problem(cidr: str) -> str | None:
    try:
        ipaddress.ip_network(cidr, strict=True)
    except ValueError:
        return f"'{cidr}' is not an IP address or CIDR network (host bits must be zero)"
    return None


def modules_installed(*names: str) -> bool:
    """Whether an optional extra's modules are importable (without importing them: check-config stays light)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in names)
    except ImportError:   # a parent package is missing (or another distribution owns its name: `envoy`)
        return False
