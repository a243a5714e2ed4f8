"""The frozen shape of idgate.yaml: one dataclass per section, with defaults and the limits other
layers rely on.  Durations are seconds (int or float); sizes are bytes (int); relative paths are
relative to the file.  proxy.config.load turns a file into these."""


from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert_file: Path
    key_file: Path


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    tls: TlsConfig | None = None


@dataclass(frozen=True, slots=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 9090


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Edge limits applied before any handler code runs."""

    max_line_bytes: int = 8190           # request line
    max_header_bytes: int = 16384        # one header field
    max_headers: int = 100               # number of header fields
    header_timeout: float = 10.0         # seconds a client may take to send the request head
    keepalive_timeout: float = 75.0
    max_head_bytes: int = 65536          # a whole request head, bounded while it is read
    max_connections: int = 4096          # open connections per listener (main, admin)
    max_connections_per_peer: int = 1024 # per client address; trusted proxies count towards the total only


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    issuer: str                                   # exact `iss` value
    audiences: tuple[str, ...]                    # required, non-empty: any-of match on `aud`
    jwks_uri: str | None = None                   # default: from the discovery document
    jwks_file: Path | None = None                 # local JWKS instead of fetching
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway: float = 30.0
    require_typ: str | None = None                # e.g. "at+jwt": refuse ID tokens as access tokens
    allowed_client_ids: tuple[str, ...] = ()      # checked against `azp` or `client_id` when non-empty
    groups_claim: str = "groups"
    max_token_bytes: int = 8192
    max_age: float | None = None                  # refuse tokens issued (`iat`) longer ago than this; requires iat
    max_lifetime: float = 86400.0                 # refuse tokens valid for longer than this (exp - iat, or exp - now)
    refresh_interval: float = 300.0               # background JWKS refresh
    unknown_kid_min_interval: float = 60.0        # at most one refetch per interval on an unknown kid
    max_stale: float = 86400.0                    # serve last-good keys this long while the issuer is down
    client: OidcClientConfig | None = None        # browser login with this issuer (needs the `login:` section)


@dataclass(frozen=True, slots=True)
class OidcClientConfig:
    """The OAuth client idgate logs browsers in as: authorization code flow with PKCE (S256)."""

    id: str
    redirect_uris: tuple[str, ...]                # as registered at the issuer: one per host, path = login.callback_path
    secret_file: Path | None = None               # the client secret; None: a public client (PKCE only)
    auth_method: str = "client_secret_basic"      # or client_secret_post; `none` for a public client
    scopes: tuple[str, ...] = ("openid", "profile", "email", "offline_access")   # offline_access: a refresh token
    post_logout_redirect_uri: str | None = None   # where the issuer sends the browser after logout


@dataclass(frozen=True, slots=True)
class UpstreamTlsConfig:
    """How idgate verifies an https:// upstream, and the client certificate it presents (mTLS)."""

    ca_file: Path | None = None                   # PEM bundle that verifies the upstream; default: the system CAs
    cert_file: Path | None = None                 # client certificate chain (PEM), with key_file
    key_file: Path | None = None                  # its private key (PEM, not encrypted)
    server_name: str | None = None                # SNI and the name verified; default: the upstream URL's host


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    upstream: str                                 # http(s)://host:port, no path
    hosts: tuple[str, ...] = ()                   # empty = any host
    path_prefix: str = "/"
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_body_bytes: int = 10 * 1024 * 1024
    websocket: bool = False
    forward_token: bool = False                   # pass the caller's Authorization upstream
    max_connections: int = 256                    # upstream connections this route may hold (WebSockets included)
    max_connections_per_identity: int = 64        # ... of which one caller (issuer, subject) may hold this many
    pool_timeout: float = 5.0                     # wait this long for one of them, then 503 upstream_busy
    websocket_idle_timeout: float = 300.0         # close a WebSocket with no message either way for this long
    websocket_max_lifetime: float = 3600.0        # ... and at this age, or when the caller's token expires
    tls: UpstreamTlsConfig | None = None          # https:// upstreams only
    login: bool = False                           # an unauthenticated page load is sent to the issuer's login
    login_issuer: str | None = None               # which issuer's client; needed when several have one


@dataclass(frozen=True, slots=True)
class ForwardAuthConfig:
    enabled: bool = True
    path: str = "/.idgate/auth"


@dataclass(frozen=True, slots=True)
class ExtAuthzHttpConfig:
    path_prefix: str = "/.idgate/ext_authz"       # Envoy's http_service.path_prefix: Envoy prepends it


@dataclass(frozen=True, slots=True)
class ExtAuthzGrpcConfig:
    host: str = "127.0.0.1"
    port: int = 9191
    max_message_bytes: int = 65536                # a CheckRequest larger than this is refused unread


@dataclass(frozen=True, slots=True)
class ExtAuthzConfig:
    """Envoy external authorization; a surface is off unless its section is given."""

    http: ExtAuthzHttpConfig | None = None
    grpc: ExtAuthzGrpcConfig | None = None        # needs `pip install idgate[envoy]`
    forward_token: bool = False                   # let the caller's Authorization reach the upstream


@dataclass(frozen=True, slots=True)
class ObjectLockConfig:
    """S3 Object Lock retention put on every shipped object (the bucket must have Object Lock enabled)."""

    mode: str = "COMPLIANCE"                      # or GOVERNANCE (users with s3:BypassGovernanceRetention may delete)
    days: int = 365


@dataclass(frozen=True, slots=True)
class CloudWatchSinkConfig:
    """Records to CloudWatch Logs as they become durable: one stream per instance, `<instance>.anchors` beside it."""

    log_group: str
    endpoint: str | None = None                   # None: AWS (or $AWS_ENDPOINT_URL_CLOUDWATCH_LOGS)
    create: bool = True                           # create the group and streams when missing


@dataclass(frozen=True, slots=True)
class S3SinkConfig:
    """Rotated segments to S3 as `<prefix><instance>/<first-seq>-<last-seq>.jsonl`, never overwritten."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None                   # None: AWS (or $AWS_ENDPOINT_URL_S3)
    object_lock: ObjectLockConfig | None = None


@dataclass(frozen=True, slots=True)
class AnchorConfig:
    key_file: Path | None = None                  # PEM EC P-256 private key; $IDGATE_ANCHOR_KEY_FILE wins
    interval: float = 60.0                        # seconds between anchors while records keep coming


@dataclass(frozen=True, slots=True)
class ShippingConfig:
    """Audit shipping off the machine, by a task of its own: never on the request path."""

    cloudwatch: CloudWatchSinkConfig | None = None
    s3: S3SinkConfig | None = None
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    state_dir: Path | None = None                 # checkpoints, anchors, gap ledger; None: <audit path>.shipping/
    region: str | None = None                     # None: aws.region
    interval: float = 1.0                         # seconds between rounds
    max_lag_seconds: float | None = None          # /readyz not ready while shipping is further behind
    timeout: float = 30.0                         # connect and read timeout of one AWS call


@dataclass(frozen=True, slots=True)
class AuditConfig:
    path: Path = Path("audit/idgate-audit.jsonl")
    # The writer's id in every record and in the shipped names (stream, S3 folder): unique per chain.
    # None: the host name; $IDGATE_AUDIT_INSTANCE wins; `--workers N` appends .w<index>.
    instance: str | None = None
    rotate_bytes: int = 100 * 1024 * 1024
    rotate_seconds: float | None = None           # also rotate a segment this old (so S3 gets it); None: by size only
    fsync: bool = True                            # False only for benchmarks / throwaway demos
    # Group commit batches whatever arrives while an fsync is in flight, so batches grow with the load
    # and the disk's latency by themselves.  > 0: a batch may also wait up to this many seconds for
    # companions (fewer fsyncs where each costs, more latency; a 2 ms wait cost forward auth 40 % of
    # its throughput here).
    group_commit_max_delay: float = 0.0
    # Retention of rotated segments (the live one is never deleted): after a rotation, the oldest are
    # deleted until at most max_segments remain and they total at most max_bytes.  None: keep them all,
    # so nothing is deleted unless configured (a full disk then fails closed, as without retention).
    max_segments: int | None = None
    max_bytes: int | None = None
    shipping: ShippingConfig | None = None        # with shipping, a segment is deleted only once shipped and anchored


@dataclass(frozen=True, slots=True)
class AssertionConfig:
    key_file: Path | None = None                  # PEM EC P-256 private key; None = ephemeral per process
    ttl: float = 60.0


@dataclass(frozen=True, slots=True)
class CredentialsConfig:
    """The container-credentials endpoint (botocore's AWS_CONTAINER_CREDENTIALS_FULL_URI) on the main listener."""

    enabled: bool = False
    path: str = "/.idgate/credentials"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The DynamoDB gateway on the main listener: clients set AWS_ENDPOINT_URL_DYNAMODB to the listener's
    URL plus `path`, with credentials from the credentials endpoint of a rule with `aws.gateway: true`."""

    enabled: bool = False
    path: str = "/.idgate/dynamodb"
    key_file: Path | None = None                  # the gateway key ring (JSON); $IDGATE_GATEWAY_KEYS wins
    endpoint: str | None = None                   # DynamoDB to forward to; None = https://dynamodb.<region>.amazonaws.com
    hosts: tuple[str, ...] = ()                   # Host values a client may sign for (host or host:port); empty = any
    max_clock_skew: float = 300.0                 # X-Amz-Date this far from idgate's clock at most (as AWS)
    credential_lifetime: int = 3600               # seconds gateway credentials are valid
    key_schema_ttl: float = 300.0                 # DescribeTable answers are kept this long
    redact_keys: bool = False                     # audit partition keys as HMACs (the ring's redaction_key)
    max_body_bytes: int = 16 * 1024 * 1024        # DynamoDB's own request limit
    max_response_bytes: int = 17 * 1024 * 1024    # a 16 MB batch answer with its JSON framing
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_connections: int = 256                    # connections to DynamoDB kept idle at most


@dataclass(frozen=True, slots=True)
class AwsConfig:
    region: str = "us-east-1"                     # table ARNs in session policies; the STS region
    sts_endpoint: str | None = None               # e.g. a local moto; None = AWS (or AWS_ENDPOINT_URL_STS)
    default_duration: int = 3600                  # seconds, for rules without aws.duration
    sts_timeout: float = 2.0                      # connect and read timeout of one STS call
    session_tags: bool = True                     # tag sessions with issuer and subject (needs sts:TagSession)
    credential_cache_size: int = 10000            # cached credential sets (role, session policy, caller)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """OpenTelemetry tracing (the `otel` extra): spans exported over OTLP/HTTP; on when the section is given."""

    endpoint: str = "http://127.0.0.1:4318/v1/traces"   # the collector's OTLP/HTTP traces URL
    enabled: bool = True
    sampling_ratio: float = 1.0                   # of new traces; a trusted parent's sampled flag decides its own
    service_name: str = "idgate"
    resource_attributes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    export_enduser_id: bool = False               # also `enduser.id` = the subject (default: the pseudonym only)
    pseudonym_key_file: Path | None = None        # HMAC key of enduser.pseudo.id; None = a new key per process
    trusted_peers: tuple[str, ...] | None = None  # CIDRs whose trace context counts; None = trusted_proxies
    xray_header: bool = False                     # also send X-Amzn-Trace-Id upstream
    max_roles: int = 16                           # groups on `user.roles` (0: none)
    max_queue_size: int = 2048                    # spans waiting for export; beyond it they are dropped (counted)
    export_timeout: float = 10.0                  # one export to the collector, retries included


@dataclass(frozen=True, slots=True)
class SessionStoreConfig:
    """Where browser sessions live: `embedded` (in memory, or a SQLite file that the workers of one host
    share) or `dynamodb` (a table with TTL that every replica shares)."""

    type: str = "embedded"
    path: Path | None = None                      # embedded: the SQLite file; None: in memory (one process only)
    table: str | None = None                      # dynamodb: the table (partition key `pk`, TTL attribute `ttl`)
    region: str | None = None                     # dynamodb: None = aws.region
    endpoint: str | None = None                   # dynamodb: None = AWS (or $AWS_ENDPOINT_URL_DYNAMODB)


@dataclass(frozen=True, slots=True)
class LoginConfig:
    """Browser login: the paths idgate answers itself, the session cookie, and the session store."""

    key_file: Path | None = None                  # AES-256 key ring sealing cookies and stored tokens; $IDGATE_SESSION_KEYS wins
    login_path: str = "/.idgate/login"            # GET ?rd=/path starts a login
    callback_path: str = "/.idgate/callback"      # the redirect_uris' path
    logout_path: str = "/.idgate/logout"          # POST ends the session (and at the issuer)
    backchannel_logout_path: str = "/.idgate/backchannel-logout"   # the issuer POSTs logout tokens here
    session_cookie: str = "__Host-idgate-session"
    session_lifetime: float = 43200.0             # a new login after this long, refreshes or not
    idle_timeout: float = 3600.0                  # ... or after this long without a request
    refresh_margin: float = 60.0                  # refresh this long before the ID token expires
    login_timeout: float = 600.0                  # a login must come back from the issuer within this
    store: SessionStoreConfig = field(default_factory=SessionStoreConfig)


@dataclass(frozen=True, slots=True)
class Config:
    source: Path
    issuers: tuple[IssuerConfig, ...]
    policies_dir: Path
    listen: ListenerConfig = field(default_factory=ListenerConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    routes: tuple[RouteConfig, ...] = ()
    forward_auth: ForwardAuthConfig = field(default_factory=ForwardAuthConfig)
    ext_authz: ExtAuthzConfig = field(default_factory=ExtAuthzConfig)
    trusted_proxies: tuple[str, ...] = ()         # CIDRs whose X-Forwarded-* / X-Original-* are believed
    audit: AuditConfig = field(default_factory=AuditConfig)
    assertion: AssertionConfig = field(default_factory=AssertionConfig)
    token_cache_size: int = 10000
    dev_mode: bool = False                        # a development setup: listen and admin must be loopback
    credentials: CredentialsConfig = field(default_factory=CredentialsConfig)
    aws: AwsConfig = field(default_factory=AwsConfig)
    tracing: TracingConfig | None = None          # None: tracing off
    login: LoginConfig | None = None              # None: no browser login


ALLOWED_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                "ES256", "ES384", "ES512", "EdDSA"})   # never `none`, never HMAC
MAX_LEEWAY = 300.0                    # a larger clock leeway would quietly disable `exp`
STALE_REFRESHES = 2                   # max_stale >= this x refresh_interval: one failed refresh refuses nobody
MAX_AWS_REGION_CHARS = 20                        # the session-policy size check at policy load assumes this
MIN_BROKER_DURATION, MAX_BROKER_DURATION = 2700, 43200   # vended credentials keep >= 30 minutes; STS max 12 h
ENV_ASSERTION_KEY_FILE = "IDGATE_ASSERTION_KEY_FILE"
ENV_AUDIT_PATH = "IDGATE_AUDIT_PATH"
ENV_AUDIT_INSTANCE = "IDGATE_AUDIT_INSTANCE"
ENV_ANCHOR_KEY_FILE = "IDGATE_ANCHOR_KEY_FILE"
ENV_GATEWAY_KEYS = "IDGATE_GATEWAY_KEYS"            # the gateway key ring's JSON itself (a secret: never a CLI flag)
ENV_SESSION_KEYS = "IDGATE_SESSION_KEYS"            # the session key ring itself (a secret: never a CLI flag)
MIN_PSEUDONYM_KEY_BYTES = 16                      # tracing.pseudonym_key_file: at least 128 bits of key
