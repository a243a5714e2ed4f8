"""Request-level attack cases shared by every surface that sees a client's HTTP request (the reverse
proxy, and Envoy asking idgate over ext_authz): one table, so each surface is held to the same answers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PathTrick:
    target: str           # the request target exactly as the client sends it
    status: int           # where idgate forwards the request itself (reverse proxy): it decides on the normalized path
    reason: str           # the reason code of the audited denial
    # Where another proxy forwards its own copy (forward auth, ext_authz), a target that normalizes to
    # another path is refused before any decision: idgate cannot change what the upstream receives.
    non_canonical: bool = False

    def __str__(self) -> str:
        return self.target

    def forwarded_by_peer(self) -> tuple[int, str]:
        """The status and reason when a fronting proxy forwards the target as the client sent it."""
        return (400, "non_canonical_path") if self.non_canonical else (self.status, self.reason)


PATH_TRICKS = (
    PathTrick("/v1/orders/../../admin", 403, "denied_by_rule", True),   # resolves to /admin: the deny rule catches it
    PathTrick("/v1/orders/%2e%2e/%2e%2e/admin/x", 403, "denied_by_rule", True),
    PathTrick("/v1/orders%2F..%2Fadmin", 400, "encoded_slash"),
    PathTrick("/v1/orders/%5C..%5Cadmin", 400, "encoded_backslash"),
    PathTrick("/v1/orders/%2e%2e%5cadmin", 400, "encoded_backslash"),
    PathTrick("//admin/x", 403, "denied_by_rule", True),
    # RFC 3986: the first `..` removes the empty segment, so this is /v1/admin (no rule), never /admin.
    PathTrick("/v1/orders//../../admin", 403, "no_matching_rule", True),
    PathTrick("/admin;x/users", 400, "path_params"),
    PathTrick("/../v1/orders", 400, "path_traversal"),
    PathTrick("/v1/orders/%00", 400, "nul"),
    PathTrick("/v1/orders/%FF", 400, "invalid_utf8"),
)

# Headers a client sends to pass itself off as someone: none may reach the upstream.  idgate's own
# (X-Idgate-*, in any case, and one idgate never sets), those of other auth proxies and CGI-style
# servers, and underscore spellings that some servers read as the dashed name.
SPOOFED_IDENTITY_HEADERS = (
    "X-Idgate-Subject: admin", "x-idgate-subject: admin", "X_Idgate_Subject: admin", "X-IDGATE-GROUPS: root",
    "X-Forwarded-User: admin", "X-Auth-Request-User: admin", "X-Idgate-Assertion: forged",
    "x-IdGaTe-rUlE: allow-all", "X-Idgate-Tenant: evil", "X_IDGATE_GROUPS: root",
    "X-Forwarded-Email: root@example.com", "X-Forwarded-Groups: admins", "X-Forwarded-Preferred-Username: root",
    "X-Auth-Request-Email: root@example.com", "X-Auth-Request-Groups: admins", "X-Remote-User: root",
    "Remote-User: root", "X_Forwarded_User: admin", "Remote_User: root",
)

# Frameworks that honour these would run another method or path than the one idgate authorized:
# 400 override_header.
OVERRIDE_HEADERS = (
    "X-HTTP-Method-Override: DELETE", "X-Method-Override: DELETE", "X_HTTP_Method: DELETE",
    "X-Original-URL: /admin/users", "X-Rewrite-URL: /admin/users",
)

# One header over the 16 KiB per-field limit: 431 header_too_large.
OVERSIZED_HEADER = "X-Big: " + "a" * 20000
