"""A lean pooled HTTP/1.1 client for the reverse proxy's data path, on llhttp (httptools): keep-alive
connections keyed by (scheme, host, port, TLS settings), streamed bodies both ways with bounded buffers,
strict answer framing.  A leaf: it imports nothing of idgate, and raises only its own exceptions."""

from proxy.transport.http1.connection import Limits
from proxy.transport.http1.errors import (
    BadResponse, BodyMismatch, ClientError, ConnectFailed, ConnectionClosed, ConnectTimeout, HeadTooLarge,
    InvalidRequest, ReadTimeout, Timeout, WriteTimeout,
)
from proxy.transport.http1.pool import Exchange, Origin, Pool, TlsSettings, client_context

__all__ = [
    "BadResponse", "BodyMismatch", "ClientError", "ConnectFailed", "ConnectTimeout", "ConnectionClosed", "Exchange",
    "HeadTooLarge", "InvalidRequest", "Limits", "Origin", "Pool", "ReadTimeout", "Timeout", "TlsSettings",
    "WriteTimeout", "client_context",
]
