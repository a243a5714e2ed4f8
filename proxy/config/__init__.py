"""idgate.yaml: the schema (frozen dataclasses) and its strict loader, re-exported for every layer above."""

from proxy.config.load import check_config, load_config
from proxy.config.schema import (
    ALLOWED_ALGORITHMS, MAX_AWS_REGION_CHARS, MAX_BROKER_DURATION, MIN_BROKER_DURATION, AdminConfig, AssertionConfig,
    AuditConfig, AwsConfig, Config, CredentialsConfig, ExtAuthzConfig, ExtAuthzGrpcConfig, ExtAuthzHttpConfig,
    ForwardAuthConfig, GatewayConfig, IssuerConfig, LimitsConfig, ListenerConfig, RouteConfig, TlsConfig, TracingConfig,
    UpstreamTlsConfig,
)

__all__ = [
    "ALLOWED_ALGORITHMS", "MAX_AWS_REGION_CHARS", "MAX_BROKER_DURATION", "MIN_BROKER_DURATION", "AdminConfig",
    "AssertionConfig", "AuditConfig", "AwsConfig", "Config", "CredentialsConfig", "ExtAuthzConfig",
    "ExtAuthzGrpcConfig", "ExtAuthzHttpConfig", "ForwardAuthConfig", "GatewayConfig", "IssuerConfig", "LimitsConfig",
    "ListenerConfig", "RouteConfig", "TlsConfig", "TracingConfig", "UpstreamTlsConfig", "check_config", "load_config",
]
