"""Browser login's config (an issuer's `client:`, the `login:` section, routes with `login: true`): defaults,
every value, and each problem at its line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from proxy.config import load_config
from proxy.config.schema import ENV_SESSION_KEYS, LoginConfig, OidcClientConfig, SessionStoreConfig
from proxy.core.errors import ConfigError


def write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "client-secret").write_text("s3cret\n")
    (tmp_path / "session-keys.json").write_text("{}")
    path = tmp_path / "idgate.yaml"
    path.write_text(textwrap.dedent(body))
    return path


GOOD = """\
    issuers:
      - issuer: https://login.example.com
        audiences: [orders-api]
        client:
          id: idgate-web
          redirect_uris: [https://apps.example.com/.idgate/callback, http://127.0.0.1:8080/.idgate/callback]
          secret_file: client-secret
          scopes: [openid, groups, offline_access]
          post_logout_redirect_uri: https://apps.example.com/
    policies_dir: policies
    routes:
      - {name: airflow, upstream: "http://127.0.0.1:8081", hosts: [apps.example.com], login: true}
    login:
      key_file: session-keys.json
      session_lifetime: 28800
      store: {type: dynamodb, table: idgate-sessions, region: eu-west-1}
    """


def test_every_login_value_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), env={})
    client = config.issuers[0].client
    assert client == OidcClientConfig(
        id="idgate-web", redirect_uris=("https://apps.example.com/.idgate/callback",
                                        "http://127.0.0.1:8080/.idgate/callback"),
        secret_file=tmp_path / "client-secret", scopes=("openid", "groups", "offline_access"),
        post_logout_redirect_uri="https://apps.example.com/")
    assert config.login == LoginConfig(key_file=tmp_path / "session-keys.json", session_lifetime=28800.0,
                                       store=SessionStoreConfig(type="dynamodb", table="idgate-sessions",
                                                                region="eu-west-1"))
    assert config.routes[0].login and config.routes[0].login_issuer is None


def test_login_is_off_without_the_section(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """\
        issuers: [{issuer: https://login.example.com, audiences: [orders-api]}]
        policies_dir: policies
        """), env={})
    assert config.login is None and config.issuers[0].client is None


def test_the_session_key_may_come_from_the_environment_only(tmp_path: Path) -> None:
    body = GOOD.replace("      key_file: session-keys.json\n", "")
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, body), env={})
    assert [p.message for p in caught.value.problems] == [
        f"login.key_file: needs the session key ring: key_file, or ${ENV_SESSION_KEYS}"]
    assert load_config(write(tmp_path, body), env={ENV_SESSION_KEYS: "{}"}).login is not None
    assert load_config(write(tmp_path, body), env={}, offline=True).login is not None


def test_each_bad_login_value_is_reported_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        issuers:
          - issuer: https://login.example.com
            audiences: [orders-api]
            client:
              id: idgate-web
              redirect_uris: [http://apps.example.com/.idgate/callback, "https://apps.example.com/cb?x=1", https://a.example.com/other]
              auth_method: client_secret_jwt
              scopes: [profile, "two words"]
              post_logout_redirect_uri: javascript:alert(1)
          - issuer: https://other.example.com
            audiences: [orders-api]
            client: {id: web2, redirect_uris: [https://b.example.com/.idgate/callback], auth_method: none, secret_file: client-secret}
        policies_dir: policies
        forward_auth: {path: /.idgate/auth}
        routes:
          - {name: app, upstream: "http://127.0.0.1:8081", login: true}
          - {name: app2, upstream: "http://127.0.0.1:8082", login: true, login_issuer: https://nobody.example.com}
        login:
          key_file: session-keys.json
          login_path: /.idgate/auth/login
          callback_path: /.idgate/callback
          logout_path: /.idgate/callback
          session_cookie: idgate-session
          idle_timeout: 90000
          login_timeout: 3600
          refresh_margin: -1
          store: {type: redis, table: x}
        """)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    found = [(p.line, p.message) for p in caught.value.problems]

    def at(line: int, text: str) -> None:
        assert any(n == line and text in m for n, m in found), (line, text, found)

    at(6, "must be https://")            # http to a host that is not loopback: the Secure cookie would not stick
    at(6, "no query or fragment")
    at(6, "must be login.callback_path")
    at(7, "must be one of client_secret_basic, client_secret_post, none")
    at(8, "must include openid")
    at(8, "a scope is printable ASCII without spaces")
    at(9, "must be an http:// or https:// URL")
    at(12, "a public client (auth_method: none) has no secret")
    at(16, "several issuers have a client: name one with login_issuer")
    at(17, "names no issuer that has a client")
    at(20, "must not overlap the forward_auth")
    at(19, "must differ")
    at(23, "must start with __Host-")
    at(24, "must not exceed session_lifetime")
    at(25, "at most 600 seconds")
    at(26, "must not be negative")
    at(27, "must be one of embedded, dynamodb")
    assert len(found) == 18, found


def test_a_client_needs_the_login_section_and_a_secret(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        issuers:
          - issuer: https://login.example.com
            audiences: [orders-api]
            client: {id: idgate-web, redirect_uris: [https://apps.example.com/.idgate/callback]}
        policies_dir: policies
        """)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    messages = sorted(str(p) for p in caught.value.problems)
    assert len(messages) == 2, messages
    assert any(":4: issuers[0].client: browser login needs the login: section" in m for m in messages)
    assert any(":4: issuers[0].client.auth_method: client_secret_basic needs the client secret" in m
               for m in messages)
