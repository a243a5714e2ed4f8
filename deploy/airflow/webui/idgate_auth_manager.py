"""Airflow 3 (3.3) auth manager for a UI behind idgate: the person is the subject of idgate's verified
X-Idgate-Assertion (ES256, `aud` = `route:<route>`, against idgate's JWKS), their Airflow role comes from their
groups, and Airflow's own cookie is re-minted from the assertion on every request (idgate_token_cookie.py).

Install: the four idgate_*.py files in $AIRFLOW_HOME/config/ (on Airflow's sys.path), then
    AIRFLOW__CORE__AUTH_MANAGER=idgate_auth_manager.IdgateAuthManager
    AIRFLOW__IDGATE__JWKS_URL=http://127.0.0.1:9090/.well-known/jwks.json   # idgate's admin listener
    AIRFLOW__IDGATE__ROUTE=airflow                                          # idgate's route name
    AIRFLOW__IDGATE__ADMIN_GROUPS=airflow-admins   (and OP_GROUPS, USER_GROUPS, VIEWER_GROUPS: comma lists)
    AIRFLOW__IDGATE__IDENTITY_PROVIDERS=https://login.example.com          # optional: the issuers to accept
A person in none of the groups has no role and is refused."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow.api_fastapi.app import AUTH_MANAGER_FASTAPI_APP_PREFIX, API_BASE_URL
from airflow.api_fastapi.auth.managers.base_auth_manager import BaseAuthManager
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.configuration import conf
from fastapi import FastAPI, HTTPException, Request, status
from fastapi.responses import RedirectResponse

from idgate_assertion import HEADER, AssertedIdentity, AssertionVerifier, InvalidAssertion
from idgate_token_cookie import IdgateTokenCookie

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.base_auth_manager import ResourceMethod
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.common.types import MenuItem


class Role(enum.IntEnum):
    """Each role can do what the ones below it can (as Airflow's simple auth manager orders them)."""
    VIEWER = 0     # read everything
    USER = 1       # + run, pause, clear DAGs
    OP = 2         # + connections, variables, pools, configuration
    ADMIN = 3      # everything


@dataclass
class IdgateUser(BaseUser):
    username: str
    role: str
    groups: list[str] = field(default_factory=list)

    def get_id(self) -> str:
        return self.username

    def get_name(self) -> str:
        return self.username

    def get_groups(self) -> list[str]:
        return list(self.groups)


def _groups(option: str) -> frozenset[str]:
    return frozenset(g.strip() for g in conf.get("idgate", option, fallback="").split(",") if g.strip())


class IdgateAuthManager(BaseAuthManager[IdgateUser]):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        providers = tuple(p.strip() for p in conf.get("idgate", "identity_providers", fallback="").split(",")
                          if p.strip())
        self.verifier = AssertionVerifier(conf.get("idgate", "jwks_url"), conf.get("idgate", "route"),
                                          identity_providers=providers)
        self.role_groups = {role: _groups(f"{role.name.lower()}_groups") for role in Role}

    def role_for(self, identity: AssertedIdentity) -> Role | None:
        granted = [role for role, groups in self.role_groups.items() if groups.intersection(identity.groups)]
        return max(granted, default=None)

    def user_for(self, identity: AssertedIdentity) -> IdgateUser | None:
        role = self.role_for(identity)
        return None if role is None else IdgateUser(identity.subject, role.name, list(identity.groups))

    def mint(self, identity: AssertedIdentity) -> str | None:
        user = self.user_for(identity)
        return None if user is None else self.generate_jwt(user)

    def get_fastapi_middlewares(self) -> list[tuple[Any, dict[str, Any]]]:
        return [(IdgateTokenCookie, {"verifier": self.verifier, "mint": self.mint})]

    def get_fastapi_app(self) -> FastAPI:
        """/auth/login, where Airflow sends a browser it does not know: with a valid assertion the next
        request carries the person's cookie already, so this only sends them back (or refuses them)."""
        from airflow.api_fastapi.core_api.security import is_safe_url

        app = FastAPI(title="idgate auth manager")

        @app.get("/login")
        def login(request: Request, next: str | None = None) -> RedirectResponse:
            try:
                identity = self.verifier.verify(request.headers.get(HEADER))
            except InvalidAssertion as exc:
                raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Airflow is reachable only through idgate") from exc
            if self.role_for(identity) is None:
                raise HTTPException(status.HTTP_403_FORBIDDEN, "none of your groups has a role in Airflow")
            return RedirectResponse(next if next and is_safe_url(next, request) else API_BASE_URL, status_code=303)

        return app

    def get_url_login(self, **kwargs: Any) -> str:
        return AUTH_MANAGER_FASTAPI_APP_PREFIX + "/login"

    def get_url_logout(self) -> str | None:
        # Airflow revokes its token, then the person logs out of idgate (its page POSTs the logout).
        return conf.get("idgate", "logout_url", fallback="/.idgate/logout")

    def serialize_user(self, user: IdgateUser) -> dict[str, Any]:
        return {"sub": user.username, "role": user.role, "groups": user.groups}

    def deserialize_user(self, token: dict[str, Any]) -> IdgateUser:
        return IdgateUser(token["sub"], Role[token["role"]].name, list(token.get("groups", [])))

    @staticmethod
    def _allowed(user: IdgateUser, method: ResourceMethod | str, *, read: Role, write: Role) -> bool:
        return Role[user.role] >= (read if method == "GET" else write)

    def is_authorized_configuration(self, *, method: ResourceMethod, user: IdgateUser, details: Any = None) -> bool:
        return self._allowed(user, method, read=Role.VIEWER, write=Role.OP)

    def is_authorized_connection(self, *, method: ResourceMethod, user: IdgateUser, details: Any = None) -> bool:
        return self._allowed(user, method, read=Role.OP, write=Role.OP)

    def is_authorized_dag(self, *, method: ResourceMethod, user: IdgateUser, access_entity: Any = None,
                          details: Any = None) -> bool:
        return self._allowed(user, method, read=Role.VIEWER, write=Role.USER)

    def is_authorized_backfill(self, *, method: ResourceMethod, user: IdgateUser, details: Any = None) -> bool:
        return self._allowed(user, method, read=Role.VIEWER, write=Role.OP)

    def is_authorized_asset(self, *, method: ResourceMethod, user: IdgateUser, details: Any = None) -> bool:
        return self._allowed(user, method, read=Role.VIEWER, write=Role.OP)

    def is_authorized_asset_alias(self, *, method: ResourceMethod, user: IdgateUser, details: Any = None) -> bool:
        return self._allowed(user, method, read=Role.VIEWER, write=Role.OP)

    def is_authorized_pool(self, *, method: ResourceMethod, user: IdgateUser, details: Any = None) -> bool:
        return self._allowed(user, method, read=Role.VIEWER, write=Role.OP)

    def is_authorized_variable(self, *, method: ResourceMethod, user: IdgateUser, details: Any = None) -> bool:
        return self._allowed(user, method, read=Role.OP, write=Role.OP)

    def is_authorized_view(self, *, access_view: AccessView, user: IdgateUser) -> bool:
        return self._allowed(user, "GET", read=Role.VIEWER, write=Role.VIEWER)

    def is_authorized_custom_view(self, *, method: ResourceMethod | str, resource_name: str,
                                  user: IdgateUser) -> bool:
        return self._allowed(user, method, read=Role.VIEWER, write=Role.ADMIN)

    def filter_authorized_menu_items(self, menu_items: list[MenuItem], *, user: IdgateUser) -> list[MenuItem]:
        return menu_items
