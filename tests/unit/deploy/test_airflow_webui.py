"""deploy/airflow/webui: Airflow's web UI behind idgate.  The config and policy load with idgate's loaders; the
assertion verifier accepts what idgate signs for the route and nothing else; the Airflow 2 middleware sets
REMOTE_USER only from what idgate sets; the Airflow 3 middleware re-mints Airflow's cookie from the assertion.
No Airflow is needed: the modules shared by both Airflow versions import none of it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import importlib
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.assertion import AssertionSigner, audience
from proxy.aws.gateway_keys import new_key_ring_text
from proxy.config import load_config
from proxy.core.model import Surface
from tests.factories import make_identity
from tests.harness.login import NAVIGATE, LoginStack, login_stack
from tests.harness.paths import DEPLOY

WEBUI = DEPLOY / "airflow" / "webui"
ROUTE = "airflow"


@pytest.fixture(scope="module")
def webui() -> Iterator[dict[str, ModuleType]]:
    """The framework-free modules, imported by bare name as Airflow imports them from $AIRFLOW_HOME/config."""
    sys.path.insert(0, str(WEBUI))
    try:
        yield {name: importlib.import_module(name)
               for name in ("idgate_assertion", "idgate_remote_user", "idgate_token_cookie")}
    finally:
        sys.path.remove(str(WEBUI))
        for name in ("idgate_assertion", "idgate_remote_user", "idgate_token_cookie"):
            sys.modules.pop(name, None)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def static_jwks(signer: AssertionSigner) -> jwt.PyJWKClient:
    """PyJWKClient's own key selection over the key set idgate's admin listener publishes, without HTTP."""
    class Static(jwt.PyJWKClient):
        def fetch_data(self) -> Any:
            return signer.jwks()
    return Static("http://127.0.0.1:9/unused")


@pytest.fixture
def signer() -> AssertionSigner:
    return AssertionSigner(ec.generate_private_key(ec.SECP256R1()), ttl=60)


def verifier_for(webui: dict[str, ModuleType], signer: AssertionSigner, **kwargs: Any) -> Any:
    return webui["idgate_assertion"].AssertionVerifier("unused", ROUTE, jwks_client=static_jwks(signer), **kwargs)


def alice_assertion(signer: AssertionSigner, aud: str = audience(Surface.PROXY, ROUTE)) -> str:
    return signer.sign(make_identity("alice", issuer="https://login.example.com", groups=("airflow-users",)), aud)


# --- the deploy files load ----------------------------------------------------------------------------------


def test_config_loads_with_login_on_the_airflow_route_in_front_of_a_loopback_upstream(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("airflow.example.com")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "tls.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
    (tmp_path / "airflow-ui-client-secret").write_text("secret")
    (tmp_path / "session-keys.json").write_text(new_key_ring_text())
    (tmp_path / "session-keys.json").chmod(0o600)
    (tmp_path / "assertion-key.pem").write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "airflow-ui.yaml").write_text((WEBUI / "policies" / "airflow-ui.yaml").read_text())
    text = (WEBUI / "idgate.yaml").read_text().replace("/etc/idgate/", f"{tmp_path}/")
    (tmp_path / "idgate.yaml").write_text(text.replace("/var/lib/idgate/", f"{tmp_path}/"))
    config = load_config(tmp_path / "idgate.yaml", env={})

    [route] = config.routes
    assert route.name == ROUTE and route.login and route.upstream.startswith("http://127.0.0.1:")
    assert config.admin.host == "127.0.0.1" and config.login is not None
    [issuer] = config.issuers
    assert issuer.client is not None and issuer.client.redirect_uris == ("https://airflow.example.com/.idgate/callback",)


# --- the assertion verifier -----------------------------------------------------------------------------------


def test_an_assertion_idgate_signed_for_the_route_names_the_person(webui, signer):
    identity = verifier_for(webui, signer).verify(alice_assertion(signer))
    assert (identity.subject, identity.identity_provider, identity.groups) == (
        "alice", "https://login.example.com", ("airflow-users",))


@pytest.mark.parametrize("aud", [audience(Surface.PROXY, "reports"), audience(Surface.FORWARD_AUTH, ROUTE),
                                 audience(Surface.EXT_AUTHZ_HTTP, ROUTE)])
def test_an_assertion_for_another_route_or_surface_is_refused(webui, signer, aud):
    with pytest.raises(webui["idgate_assertion"].InvalidAssertion):
        verifier_for(webui, signer).verify(alice_assertion(signer, aud))


def test_no_assertion_an_expired_one_or_one_of_another_key_is_refused(webui, signer):
    invalid, verifier = webui["idgate_assertion"].InvalidAssertion, verifier_for(webui, signer)
    for missing in (None, ""):
        with pytest.raises(invalid, match="did not come through idgate"):
            verifier.verify(missing)
    old = AssertionSigner(ec.generate_private_key(ec.SECP256R1()), ttl=60, clock=Clock(1_000_000))
    expired = old.sign(make_identity("alice", expires_in=10**10), audience(Surface.PROXY, ROUTE))
    with pytest.raises(invalid):
        verifier_for(webui, old).verify(expired)
    stranger = AssertionSigner(ec.generate_private_key(ec.SECP256R1()), ttl=60)
    with pytest.raises(invalid):
        verifier.verify(alice_assertion(stranger))


def unsigned_jwt(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None = None) -> str:
    """A JWT PyJWT would refuse to make: alg none, or HS256 keyed with a public key."""
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")
    signing_input = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(claims).encode())
    signature = b"" if hmac_key is None else b64(hmac.new(hmac_key, signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()


def test_a_token_that_is_not_an_idgate_assertion_is_refused_even_with_idgates_key(webui):
    key = ec.generate_private_key(ec.SECP256R1())
    signer = AssertionSigner(key, ttl=60)
    verifier = verifier_for(webui, signer)
    invalid = webui["idgate_assertion"].InvalidAssertion
    claims = jwt.decode(alice_assertion(signer), options={"verify_signature": False})
    with pytest.raises(invalid, match="not an idgate assertion"):
        verifier.verify(jwt.encode(claims, key, algorithm="ES256", headers={"kid": signer.kid}))   # typ JWT
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"kid": signer.kid, "typ": "idgate-assertion+jwt"}
    for forged in (unsigned_jwt({**header, "alg": "none"}, claims),
                   unsigned_jwt({**header, "alg": "HS256"}, claims, hmac_key=public_pem)):
        with pytest.raises(invalid):
            verifier.verify(forged)


def test_pinned_identity_providers_refuse_a_subject_of_another_issuer(webui, signer):
    pinned = verifier_for(webui, signer, identity_providers=("https://other.example.com",))
    with pytest.raises(webui["idgate_assertion"].InvalidAssertion, match="identity provider"):
        pinned.verify(alice_assertion(signer))


# --- Airflow 2: REMOTE_USER ----------------------------------------------------------------------------------


def remote_user(webui: dict[str, ModuleType], environ: dict[str, Any], verifier: Any = None) -> str | None:
    seen: dict[str, Any] = {}

    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(env)
        return [b""]

    webui["idgate_remote_user"].IdgateRemoteUser(app, verifier)(dict(environ), lambda *args: None)
    return seen.get("REMOTE_USER")


def test_remote_user_is_idgates_subject_header_and_nothing_else(webui):
    assert remote_user(webui, {"HTTP_X_IDGATE_SUBJECT": "alice"}) == "alice"
    # A REMOTE_USER the WSGI server filled in (gunicorn's forwarder_headers copies one from a request header) and
    # other proxies' user headers are not idgate's.
    assert remote_user(webui, {"REMOTE_USER": "admin", "HTTP_AUTHORIZATION": "Basic YWRtaW46eA=="}) is None
    assert remote_user(webui, {"REMOTE_USER": "admin", "HTTP_X_IDGATE_SUBJECT": "alice"}) == "alice"
    for header in ("HTTP_REMOTE_USER", "HTTP_X_FORWARDED_USER", "HTTP_X_REMOTE_USER", "HTTP_X_AUTH_REQUEST_USER",
                   "HTTP_X_IDGATE_ISSUER", "HTTP_X_IDGATE_GROUPS"):
        assert remote_user(webui, {header: "admin"}) is None, header


def test_a_repeated_empty_or_unprintable_subject_logs_nobody_in(webui):
    for value in ("", "alice,admin", "alice\nadmin", "alice\x00"):
        assert remote_user(webui, {"HTTP_X_IDGATE_SUBJECT": value}) is None, repr(value)


def test_with_a_verifier_remote_user_is_the_verified_assertions_subject(webui, signer):
    verifier = verifier_for(webui, signer)
    environ = {"HTTP_X_IDGATE_SUBJECT": "admin", "HTTP_X_IDGATE_ASSERTION": alice_assertion(signer)}
    assert remote_user(webui, environ, verifier) == "alice"
    assert remote_user(webui, {"HTTP_X_IDGATE_SUBJECT": "admin"}, verifier) is None
    assert remote_user(webui, {"HTTP_X_IDGATE_ASSERTION": "x.y.z", "REMOTE_USER": "admin"}, verifier) is None


# --- Airflow 3: the `_token` cookie ----------------------------------------------------------------------------


def mint_for_airflow_users(identity: Any) -> str | None:
    """Stands for IdgateAuthManager.mint: names whom it minted for; no role (None) outside airflow-users."""
    return f"minted-for-{identity.subject}" if "airflow-users" in identity.groups else None


async def forwarded(webui: dict[str, ModuleType], verifier: Any, headers: list[tuple[bytes, bytes]],
                    scope_type: str = "http", mint: Any = mint_for_airflow_users) -> list[tuple[bytes, bytes]]:
    """The headers the app behind the middleware sees."""
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope)

    middleware = webui["idgate_token_cookie"].IdgateTokenCookie(app, verifier=verifier, mint=mint)
    await middleware({"type": scope_type, "headers": headers}, None, None)
    return list(seen.get("headers", []))


async def test_airflows_cookie_is_minted_for_the_asserted_person_whatever_the_browser_sent(webui, signer):
    assertion = alice_assertion(signer).encode()
    headers = [(b"cookie", b"_token=forged-admin; theme=dark"), (b"cookie", b" _token =again"),
               (b"x-idgate-assertion", assertion), (b"authorization", b"Bearer api-client")]
    seen = await forwarded(webui, verifier_for(webui, signer), headers)
    assert (b"cookie", b"theme=dark; _token=minted-for-alice") in seen
    assert [name for name, _ in seen].count(b"cookie") == 1
    assert (b"authorization", b"Bearer api-client") in seen     # an explicit credential is Airflow's to judge


async def test_without_a_valid_assertion_or_a_role_the_cookie_is_dropped(webui, signer):
    verifier = verifier_for(webui, signer)
    forged = [(b"cookie", b"_token=forged-admin; theme=dark")]
    assert (b"cookie", b"theme=dark") in await forwarded(webui, verifier, forged)
    assert await forwarded(webui, verifier, [(b"cookie", b"_token=forged-admin")]) == []
    twice = [(b"x-idgate-assertion", alice_assertion(signer).encode())] * 2 + forged
    assert (b"cookie", b"theme=dark") in await forwarded(webui, verifier, twice)
    stranger = AssertionSigner(ec.generate_private_key(ec.SECP256R1()), ttl=60)
    assert (b"cookie", b"theme=dark") in await forwarded(
        webui, verifier, [(b"x-idgate-assertion", alice_assertion(stranger).encode()), *forged])
    no_role = signer.sign(make_identity("bob", groups=("sales",)), audience(Surface.PROXY, ROUTE)).encode()
    assert (b"cookie", b"theme=dark") in await forwarded(webui, verifier, [(b"x-idgate-assertion", no_role), *forged])
    assert (b"cookie", b"_token=minted-for-alice") in await forwarded(
        webui, verifier, [(b"x-idgate-assertion", alice_assertion(signer).encode())], scope_type="websocket")


# --- through a real idgate ----------------------------------------------------------------------------------


@pytest.fixture
async def stack(oidc_provider, tmp_path) -> AsyncIterator[LoginStack]:
    async with login_stack(oidc_provider, tmp_path) as running:
        yield running


async def test_what_idgate_sends_the_ui_logs_in_its_user_and_no_one_a_client_names(webui, stack):
    """A browser logs in through the real OP and, on its page load, claims to be `admin` in every header these
    integrations read: the upstream receives idgate's word (alice), and so do REMOTE_USER and the cookie."""
    claims = {"X-Idgate-Subject": "admin", "X_Idgate_Subject": "admin", "X-Idgate-Assertion": "forged",
              "Remote-User": "admin", "Cookie": "_token=forged-admin"}
    async with stack.browser() as browser:
        await stack.log_in(browser)
        async with browser.get(stack.url + "/app/page", headers={**NAVIGATE, **claims},
                               allow_redirects=False) as response:
            assert response.status == 200
    seen = stack.upstream.received[-1]
    assert seen.header("X-Idgate-Subject") == ["alice"]
    environ = {"HTTP_" + name.upper().replace("-", "_"): value for name, value in seen.headers}
    assert remote_user(webui, environ) == "alice"

    # The assertion verifies against the JWKS idgate's admin listener serves (PyJWKClient blocks: a thread).
    verifier = webui["idgate_assertion"].AssertionVerifier(
        stack.idgate.admin_url + "/.well-known/jwks.json", "app", identity_providers=(stack.op.issuer,))
    [assertion] = seen.header("X-Idgate-Assertion")
    identity = await asyncio.to_thread(verifier.verify, assertion)
    assert identity.subject == "alice" and "data-eng" in identity.groups
    assert await asyncio.to_thread(remote_user, webui, environ, verifier) == "alice"

    headers = [(name.lower().encode(), value.encode()) for name, value in seen.headers]
    anyone = await forwarded(webui, verifier, headers, mint=lambda identity: f"minted-for-{identity.subject}")
    cookie = [value for name, value in anyone if name == b"cookie"]
    assert cookie and cookie[0].endswith(b"_token=minted-for-alice") and b"forged" not in cookie[0]

