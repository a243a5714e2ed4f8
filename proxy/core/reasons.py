"""The one registry of reason codes: every machine-readable "why" that idgate writes into an audit record,
a metric label, an `idgate check` answer or a denial's metadata is a member here, so a typo is a type error
rather than a new reason that no dashboard knows.  The values are the wire strings; never rename one."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # --- policy decisions (proxy.policy.engine) ---
    MATCHED = "matched"                                   # an allow rule matched and no deny rule did
    DENIED_BY_RULE = "denied_by_rule"                     # an `effect: deny` rule matched
    NO_MATCHING_RULE = "no_matching_rule"                 # default deny

    # --- the request target (proxy.core.paths) ---
    NOT_ABSOLUTE_PATH = "not_absolute_path"
    FRAGMENT = "fragment"
    NUL = "nul"
    CONTROL_CHAR = "control_char"
    INVALID_CHARACTER = "invalid_character"
    BACKSLASH = "backslash"
    BAD_ESCAPE = "bad_escape"
    ENCODED_SLASH = "encoded_slash"
    ENCODED_BACKSLASH = "encoded_backslash"
    DOUBLE_ENCODING = "double_encoding"
    INVALID_UTF8 = "invalid_utf8"
    PATH_PARAMS = "path_params"
    PATH_TRAVERSAL = "path_traversal"
    NON_CANONICAL_PATH = "non_canonical_path"             # another proxy forwards a spelling idgate did not decide on
    NOT_ORIGIN_FORM = "not_origin_form"
    BAD_TARGET = "bad_target"                             # a target aiohttp's router refused (OPTIONS *, CONNECT)
    NO_ROUTE = "no_route"

    # --- the request head ---
    BAD_HOST = "bad_host"
    BAD_METHOD = "bad_method"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    BAD_HEADER = "bad_header"
    TOO_MANY_HEADERS = "too_many_headers"
    HEADER_TOO_LARGE = "header_too_large"
    OVERRIDE_HEADER = "override_header"                   # X-HTTP-Method-Override and friends
    UNSUPPORTED_EXPECT = "unsupported_expect"             # an Expect other than 100-continue
    UNSUPPORTED_TRANSFER_ENCODING = "unsupported_transfer_encoding"   # anything but a plain `chunked`
    DUPLICATE_AUTHORIZATION = "duplicate_authorization"
    MALFORMED_AUTHORIZATION = "malformed_authorization"
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    UNTRUSTED_PEER = "untrusted_peer"                     # a surface for trusted proxies asked by someone else
    MISSING_ORIGINAL_REQUEST = "missing_original_request"
    AMBIGUOUS_ORIGINAL_REQUEST = "ambiguous_original_request"
    WEBSOCKET_NOT_ALLOWED = "websocket_not_allowed"
    BAD_WEBSOCKET_HANDSHAKE = "bad_websocket_handshake"

    # --- the request body ---
    BODY_TOO_LARGE = "body_too_large"
    BODY_TIMEOUT = "body_timeout"
    MALFORMED_BODY = "malformed_body"                     # a chunked body whose framing the parser refused

    # --- Envoy's CheckRequest (proxy.edges.ext_authz_grpc) ---
    MALFORMED_CHECK = "malformed_check"
    NOT_HTTP_CHECK = "not_http_check"
    MISSING_PATH = "missing_path"
    MISSING_ATTRIBUTES = "missing_attributes"

    # --- tokens (proxy.oidc) ---
    MISSING_TOKEN = "missing_token"
    TOKEN_TOO_LARGE = "token_too_large"
    MALFORMED_TOKEN = "malformed_token"
    UNSUPPORTED_HEADER = "unsupported_header"             # a JOSE header idgate does not accept (crit, jku, ...)
    ALG_NOT_ALLOWED = "alg_not_allowed"
    UNKNOWN_ISSUER = "unknown_issuer"
    UNKNOWN_KID = "unknown_kid"
    BAD_SIGNATURE = "bad_signature"
    WRONG_TOKEN_TYPE = "wrong_token_type"
    MISSING_CLAIM = "missing_claim"
    INVALID_CLAIM = "invalid_claim"
    BAD_AUDIENCE = "bad_audience"
    BAD_CLIENT = "bad_client"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"
    ISSUED_IN_FUTURE = "issued_in_future"
    TOKEN_TOO_OLD = "token_too_old"                       # issued longer ago than the issuer's max_age
    TOKEN_LIFETIME_TOO_LONG = "token_lifetime_too_long"   # exp - iat over the issuer's max_lifetime
    TOO_MANY_GROUPS = "too_many_groups"
    ISSUER_UNAVAILABLE = "issuer_unavailable"

    # --- browser login and sessions (proxy.sessions, proxy.edges.login) ---
    NO_SESSION = "no_session"                             # a session cookie that does not open, or names no live session
    SESSION_EXPIRED = "session_expired"                   # past its lifetime or idle timeout
    SESSION_REVOKED = "session_revoked"                   # the issuer refused its refresh token
    SESSION_STORE_UNAVAILABLE = "session_store_unavailable"
    CROSS_SITE_REQUEST = "cross_site_request"             # a state-changing request carried by the session cookie, from another origin
    LOGIN_STATE_INVALID = "login_state_invalid"           # the login cookie is missing, tampered, expired or not this state's
    LOGIN_STATE_REPLAYED = "login_state_replayed"         # a login state already used once
    ISS_MISMATCH = "iss_mismatch"                         # RFC 9207: the callback's `iss` is missing or another issuer's
    NONCE_MISMATCH = "nonce_mismatch"                     # the ID token is not this login's
    LOGIN_REFUSED = "login_refused"                       # the issuer answered the login with an error
    CODE_EXCHANGE_FAILED = "code_exchange_failed"         # the token endpoint refused the code (or was unreachable)
    LOGIN_UNAVAILABLE = "login_unavailable"               # no client redirect URI for this host, or login is not configured here
    LOGOUT_TOKEN_INVALID = "logout_token_invalid"         # a back-channel logout token that fails its checks

    # --- AWS roles and session policies (proxy.policy.session_policy, proxy.aws) ---
    NO_AWS_RULE = "no_aws_rule"
    ROLE_REQUIRED = "role_required"
    ROLE_NOT_GRANTED = "role_not_granted"
    AMBIGUOUS_ROLE = "ambiguous_role"
    BAD_ROLE = "bad_role"
    BAD_QUERY = "bad_query"
    CLAIM_MISSING = "claim_missing"                       # a `${claims.x}` template names a claim the token lacks
    CLAIM_EMPTY = "claim_empty"
    CLAIM_NOT_STRING = "claim_not_string"
    CLAIM_TOO_LONG = "claim_too_long"
    CLAIM_UNSAFE = "claim_unsafe"
    INSECURE_TRANSPORT = "insecure_transport"
    BROKER_UNAVAILABLE = "broker_unavailable"
    INVALID_STS_REQUEST = "invalid_sts_request"
    SESSION_POLICY_TOO_LARGE = "session_policy_too_large"
    SESSION_POLICY_REJECTED = "session_policy_rejected"
    WEB_IDENTITY_REJECTED = "web_identity_rejected"
    STS_ACCESS_DENIED = "sts_access_denied"
    STS_REJECTED_REQUEST = "sts_rejected_request"
    STS_THROTTLED = "sts_throttled"
    STS_TIMEOUT = "sts_timeout"
    STS_UNREACHABLE = "sts_unreachable"
    STS_UNAVAILABLE = "sts_unavailable"
    STS_ERROR = "sts_error"
    STS_BAD_ANSWER = "sts_bad_answer"
    STS_BASE_CREDENTIALS = "sts_base_credentials"         # idgate's own AWS credentials are missing or refused
    STS_SHORT_LIVED = "sts_short_lived"
    STS_EXPIRED_CREDENTIALS = "sts_expired_credentials"

    # --- the DynamoDB gateway: the client's SigV4 signature (proxy.aws.sigv4) ---
    MISSING_SIGNATURE = "missing_signature"               # no `Authorization: AWS4-HMAC-SHA256 ...`
    MALFORMED_SIGNATURE = "malformed_signature"           # an Authorization, X-Amz-Date or credential scope idgate cannot parse
    UNSIGNED_HEADER = "unsigned_header"                   # host, x-amz-date, x-amz-security-token, x-amz-target or content-type not signed
    DUPLICATE_SIGNED_HEADER = "duplicate_signed_header"   # a signed (or x-amz-*) header sent more than once
    WRONG_SIGNATURE_SCOPE = "wrong_signature_scope"       # another region or service, or a scope date that is not X-Amz-Date's
    SIGNATURE_EXPIRED = "signature_expired"               # X-Amz-Date outside the allowed clock skew (a replay)
    PAYLOAD_HASH_MISMATCH = "payload_hash_mismatch"       # X-Amz-Content-SHA256 is not the body's (or is UNSIGNED-PAYLOAD)
    SIGNATURE_MISMATCH = "signature_mismatch"
    WRONG_GATEWAY_HOST = "wrong_gateway_host"             # signed for a host the gateway does not answer for

    # --- gateway credentials (proxy.aws.gateway_tokens) ---
    INVALID_GATEWAY_TOKEN = "invalid_gateway_token"       # forged, tampered, another key ring's, or not this access key id's
    UNKNOWN_GATEWAY_KEY = "unknown_gateway_key"           # sealed with a key the ring no longer (or never) held
    GATEWAY_TOKEN_EXPIRED = "gateway_token_expired"
    GATEWAY_TOKEN_TOO_LARGE = "gateway_token_too_large"   # an identity the policy reads too much of to fit a header

    # --- DynamoDB requests (proxy.aws.dynamodb) ---
    UNKNOWN_OPERATION = "unknown_operation"               # an X-Amz-Target idgate does not know
    MALFORMED_JSON = "malformed_json"
    INVALID_DYNAMODB_REQUEST = "invalid_dynamodb_request" # a request idgate cannot decode into touches: denied
    UNBOUNDED_STATEMENT = "unbounded_statement"           # PartiQL idgate cannot bound to one table
    FOREIGN_TABLE = "foreign_table"                       # a table ARN of another partition, region or account
    KEY_SCHEMA_UNAVAILABLE = "key_schema_unavailable"     # DescribeTable failed: no key, no decision
    GATEWAY_BUSY = "gateway_busy"                         # large calls take turns on one thread; this one waited too long

    # --- DynamoDB authorization (proxy.policy.dynamodb) ---
    ACTION_NOT_GRANTED = "action_not_granted"             # no rule grants this action on this table
    INDEX_NOT_GRANTED = "index_not_granted"
    LEADING_KEY_NOT_GRANTED = "leading_key_not_granted"   # a partition key outside the rule's leading_keys (or none: Scan)
    UNMAPPED_INDEX = "unmapped_index"                     # an index keyed otherwise than the table, under leading_keys
    ATTRIBUTE_NOT_GRANTED = "attribute_not_granted"
    ALL_ATTRIBUTES = "all_attributes"                     # all attributes asked for (no projection, ALL_*) under an attribute list
    WHOLE_ITEM_WRITE = "whole_item_write"                 # a put or delete of a whole item under an attribute list
    NOT_GATEWAY_ROLE = "not_gateway_role"                 # the credentials' role is no longer granted in gateway mode

    # --- acting on an allow ---
    UPSTREAM_FAILED = "upstream_failed"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_BAD_RESPONSE = "upstream_bad_response"       # an answer that breaks HTTP/1.1 framing (smuggling, a broken upstream)
    UPSTREAM_BUSY = "upstream_busy"                       # the route's connections were all in use for pool_timeout
    IDENTITY_BUSY = "identity_busy"                       # the caller holds its share of the route's connections
    WEBSOCKET_IDLE = "websocket_idle"                     # outcomes: why idgate closed a WebSocket
    WEBSOCKET_TOKEN_EXPIRED = "websocket_token_expired"
    WEBSOCKET_MAX_LIFETIME = "websocket_max_lifetime"
    CLIENT_DISCONNECTED = "client_disconnected"           # an outcome, never a denial

    # --- idgate itself ---
    AUDIT_UNAVAILABLE = "audit_unavailable"               # fail closed: nothing moves without its record
    INTERNAL = "internal"
    CONFIG_ERROR = "config_error"                         # startup only, never an answer
