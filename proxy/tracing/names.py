"""The one registry of the spans idgate makes below a request's server span, so that a dashboard's query and
the code that feeds it spell them alike.  The server span itself is named "<method> <surface>", or after
the gRPC method."""

from __future__ import annotations

from enum import StrEnum


class SpanName(StrEnum):
    TOKEN_VERIFY = "idgate.token.verify"          # the verifier: a cache hit or a verification
    AUTHORIZE = "idgate.authorize"                # the policy decision (the gateway's: decode, touches, grants)
    AUDIT_APPEND = "idgate.audit.append"          # one durable audit record, its fsync wait included
    AUTHENTICATE = "idgate.authenticate"          # the DynamoDB gateway's SigV4 check
    UPSTREAM = "idgate.upstream"                  # the reverse proxy's exchange with the upstream (client)
    STS = "idgate.sts"                            # the broker's credentials for a role (client)
    KEY_SCHEMA = "idgate.dynamodb.key_schema"     # the gateway's DescribeTable, when not cached (client)
    DYNAMODB = "idgate.dynamodb"                  # the gateway's call to DynamoDB (client)
