"""Airflow 2's web UI behind idgate: a WSGI middleware that makes REMOTE_USER (what Flask-AppBuilder's
AUTH_REMOTE_USER logs in) the person idgate authenticated, and nothing else.

idgate strips every client-sent X-Idgate-* header (any case, `_` for `-`) and sets X-Idgate-Subject itself,
so through idgate the header is idgate's word.  Straight to the webserver, anyone can send it: the UI must be
reachable only through idgate (bound to loopback beside it, or behind a network policy)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from idgate_assertion import HEADER, AssertionVerifier, InvalidAssertion

SUBJECT_KEY = "HTTP_X_IDGATE_SUBJECT"                              # X-Idgate-Subject in the WSGI environ
ASSERTION_KEY = "HTTP_" + HEADER.upper().replace("-", "_")         # X-Idgate-Assertion

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class IdgateRemoteUser:
    """Sets REMOTE_USER from idgate's X-Idgate-Subject, or with a `verifier` from the subject of a verified
    X-Idgate-Assertion (which also holds if something other than idgate can reach the webserver)."""

    def __init__(self, app: WsgiApp, verifier: AssertionVerifier | None = None) -> None:
        self.app = app
        self.verifier = verifier

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        # Whatever filled REMOTE_USER before is not idgate (gunicorn's forwarder_headers copies it from a header).
        environ.pop("REMOTE_USER", None)
        subject = self._subject(environ)
        if subject is not None:
            environ["REMOTE_USER"] = subject
        return self.app(environ, start_response)

    def _subject(self, environ: dict[str, Any]) -> str | None:
        if self.verifier is not None:
            try:
                return self.verifier.verify(environ.get(ASSERTION_KEY)).subject
            except InvalidAssertion:
                return None
        subject = environ.get(SUBJECT_KEY, "")
        # WSGI servers join a repeated header with ",": idgate sends exactly one, so two means one is not its.
        if not subject or "," in subject or not subject.isprintable():
            return None
        return str(subject)
