"""The one exception tree of idgate; each class carries the HTTP status it maps to.

    IdgateError                      500  internal
    ├── ConfigError                  (startup only: a list of file:line problems, never an HTTP answer)
    ├── StartupError                 (startup only: something the config names that idgate cannot take, e.g. a port in use)
    ├── BadRequest                   400  bad_request       malformed request, path trick, malformed Authorization header
    │   ├── RequestTooLarge          413  too_large         body over the route limit
    │   ├── RequestTimeout           408  request_timeout   client stopped sending its body
    │   ├── ExpectationFailed        417  expectation_failed  an Expect other than 100-continue
    │   └── HeadersTooLarge          431  headers_too_large
    ├── AuthenticationError          401  unauthenticated   no / malformed / invalid / expired token (RFC 6750 invalid_token)
    ├── AccessDenied                 403  forbidden         policy says no (or no rule matched)
    ├── NotFound                     404  not_found         no route for host/path
    ├── DependencyError              503  unavailable       issuer keys, audit sink, STS unavailable
    └── UpstreamError                502  bad_gateway       upstream refused / reset / malformed answer
        └── UpstreamTimeout          504  gateway_timeout

Third-party exceptions are translated to these in the module that calls the library.  Messages are
safe to show to the client: they never contain a token, a claim value or an internal address.
`reason` is a short machine code from proxy.core.reasons, recorded in the audit log and in `idgate check` output.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.core.reasons import Reason


class IdgateError(Exception):
    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, reason: Reason) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem in a config or policy file, located for a human."""

    file: str
    line: int | None  # 1-based; None when the problem is about the file as a whole
    message: str
    rule_id: str | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        rule = f" [rule {self.rule_id}]" if self.rule_id else ""
        return f"{where}:{rule} {self.message}"


class ConfigError(IdgateError):
    code = "config_error"

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid configuration", reason=Reason.CONFIG_ERROR)


class StartupError(IdgateError):
    """A listener or file idgate cannot take at start: one line for the operator naming the cause and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason=Reason.INTERNAL)


# The HTTP answer of each class, as drawn in the tree above (one line each: they differ only in these).
class BadRequest(IdgateError): status, code = 400, "bad_request"
class RequestTooLarge(BadRequest): status, code = 413, "too_large"
class RequestTimeout(BadRequest): status, code = 408, "request_timeout"
class ExpectationFailed(BadRequest): status, code = 417, "expectation_failed"
class HeadersTooLarge(BadRequest): status, code = 431, "headers_too_large"
class AuthenticationError(IdgateError): status, code = 401, "unauthenticated"
class AccessDenied(IdgateError): status, code = 403, "forbidden"
class NotFound(IdgateError): status, code = 404, "not_found"
class DependencyError(IdgateError): status, code = 503, "unavailable"
class UpstreamError(IdgateError): status, code = 502, "bad_gateway"
class UpstreamTimeout(UpstreamError): status, code = 504, "gateway_timeout"
