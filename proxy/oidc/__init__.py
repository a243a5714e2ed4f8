"""OIDC bearer-token authentication: issuers, discovery, JWKS cache and token verification.
`TokenVerifier` and `bearer_token` are the public API; the submodules are its parts."""

from proxy.oidc.verifier import TokenVerifier
from proxy.oidc.wire import bearer_token

__all__ = ["TokenVerifier", "bearer_token"]
