"""Airflow 2 (2.9 and later, with the FAB provider): the web UI logs in whoever idgate authenticated.

Install: this file as $AIRFLOW_HOME/webserver_config.py; idgate_remote_user.py and idgate_assertion.py in
$AIRFLOW_HOME/config/ (Airflow puts that folder on sys.path).  Put idgate's route with `login: true` in front
(deploy/airflow/webui/idgate.yaml) and bind the webserver where only idgate reaches it: it believes the
X-Idgate-Subject header, which idgate strips from clients and sets itself, and which anyone talking to the
webserver directly could send.  With IDGATE_JWKS_URL set (idgate's admin listener,
http://127.0.0.1:9090/.well-known/jwks.json) it believes only a verified X-Idgate-Assertion instead."""

from __future__ import annotations

import os
from typing import Any

from airflow.providers.fab.auth_manager.security_manager.override import FabAirflowSecurityManagerOverride
from flask import request
from flask_appbuilder.const import AUTH_REMOTE_USER
from flask_login import current_user, logout_user

from idgate_assertion import AssertionVerifier
from idgate_remote_user import IdgateRemoteUser

AUTH_TYPE = AUTH_REMOTE_USER            # Flask-AppBuilder logs in the WSGI environ's REMOTE_USER
AUTH_USER_REGISTRATION = True           # a person's first visit creates their Airflow user ...
AUTH_USER_REGISTRATION_ROLE = "Viewer"  # ... with the least role; grant more with `airflow users add-role`
WTF_CSRF_ENABLED = True


def _verifier() -> AssertionVerifier | None:
    jwks_url = os.environ.get("IDGATE_JWKS_URL")
    return AssertionVerifier(jwks_url, os.environ.get("IDGATE_ROUTE", "airflow")) if jwks_url else None


def _follow_idgate() -> None:
    """Flask-AppBuilder logs REMOTE_USER in once and then trusts its own session cookie: when idgate's person
    changes (logged out, someone else logged in in the same browser), that session must end with it."""
    if current_user.is_authenticated and current_user.username != request.environ.get("REMOTE_USER"):
        logout_user()


class IdgateSecurityManager(FabAirflowSecurityManagerOverride):
    def __init__(self, appbuilder: Any) -> None:
        super().__init__(appbuilder)
        app = appbuilder.get_app
        app.wsgi_app = IdgateRemoteUser(app.wsgi_app, _verifier())
        app.before_request(_follow_idgate)


SECURITY_MANAGER_CLASS = IdgateSecurityManager
