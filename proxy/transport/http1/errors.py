"""The client's own exceptions: everything proxy.transport.http1 raises for a failed exchange is one of
these (the request body's own exceptions, raised by the caller's iterator, pass through unchanged)."""

from __future__ import annotations


class ClientError(Exception):
    """An exchange with the upstream failed; the connection it used is closed, never reused."""


class ConnectFailed(ClientError):
    """No connection: refused, unreachable, a name that does not resolve, a TLS handshake or
    certificate verification that failed."""


class Timeout(ClientError):
    """The upstream took too long (connect_timeout to connect, read_timeout per read or write)."""


class ConnectTimeout(Timeout, ConnectFailed):
    pass


class ReadTimeout(Timeout):
    pass


class WriteTimeout(Timeout):
    """The upstream stopped reading the request body."""


class ConnectionClosed(ClientError):
    """The upstream closed (or reset) the connection before its answer was complete."""

    def __init__(self, message: str, *, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered            # whether any byte of an answer had arrived


class BadResponse(ClientError):
    """The answer broke HTTP/1.1 framing (status line, headers, Content-Length, chunks, ...)."""


class HeadTooLarge(BadResponse):
    """The answer's head (status line and headers, interim answers included) exceeded its bound."""


class InvalidRequest(ClientError):
    """The request itself cannot be written: a control character in the head, a Transfer-Encoding
    from the caller (the client frames bodies itself), a body that does not match its Content-Length."""


class BodyMismatch(InvalidRequest):
    """The request body did not match its Content-Length (or came with none where one was announced)."""
