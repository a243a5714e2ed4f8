"""Small checks the config validators share: URLs, positive numbers, AWS region names."""

from __future__ import annotations

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


def check_positive(obj: Any, spot: Spot, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            spot.report("must be greater than 0", name)
