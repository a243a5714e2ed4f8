"""idgate: identity-aware proxy and AWS credential broker.

Authenticate (OIDC) → authorize (policy files) → audit (hash-chained, durable) → act (edge adapter).
"""

__version__ = "0.1.0"
