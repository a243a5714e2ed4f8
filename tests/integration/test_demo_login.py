"""The demo's browser login: the development issuer's login page (proxy.dev.login_issuer) with idgate as a
public client (PKCE only), on free ports: a person picked on the page reaches the echo app as themself, one
without the group gets 403, and logout goes through the issuer and back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from proxy.dev.demo import WEB_CLIENT
from proxy.dev.issuer import DevIssuer
from proxy.dev.login_issuer import DevLogin
from proxy.dev.upstream import echo_app
from proxy.dev import local_aws
from tests.harness.browserless import browser_session, first_form
from tests.harness.login import NAVIGATE, SESSION_COOKIE
from tests.harness.processes import HOST, free_port
from tests.harness.servers import RunningIdgate, running_idgate, serve_app
from tests.harness.stack import example_policies


@dataclass
class Demo:
    idgate: RunningIdgate
    web: str                         # http://localhost:<port>, as the demo prints it
    issuer: str


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Demo]:
    issuer_port, port = free_port(), free_port()
    web = f"http://localhost:{port}"
    issuer = DevIssuer(f"http://{HOST}:{issuer_port}", "idgate-demo")
    login = DevLogin(issuer.issuer_url, WEB_CLIENT, f"{web}/.idgate/callback", f"{web}/", issuer.sign)
    (tmp_path / "examples").mkdir()
    policies = example_policies(tmp_path / "examples", issuer.issuer_url)
    config = {
        "dev_mode": True,
        "listen": {"host": HOST, "port": port}, "admin": {"host": HOST, "port": 0},
        "issuers": [{"issuer": issuer.issuer_url, "audiences": ["idgate-demo"], "require_typ": "at+jwt", "client": {
            "id": WEB_CLIENT, "auth_method": "none", "redirect_uris": [f"{web}/.idgate/callback"],
            "scopes": ["openid", "groups"], "post_logout_redirect_uri": f"{web}/"}}],
        "policies_dir": str(policies),
        "login": {"key_file": str(local_aws.write_key_ring(tmp_path / "session-keys.json"))},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
    }
    async with serve_app(issuer.app(login), issuer_port), serve_app(echo_app()) as upstream_port:
        config["routes"] = [{"name": "demo-web", "upstream": f"http://{HOST}:{upstream_port}",
                             "hosts": ["localhost"], "login": True}]
        path = tmp_path / "idgate.yaml"
        path.write_text(yaml.safe_dump(config))
        async with running_idgate(path) as idgate:
            yield Demo(idgate, web, issuer.issuer_url)


async def log_in(demo: Demo, browser, person: str) -> None:
    async with browser.get(demo.web + "/", headers=NAVIGATE, allow_redirects=False) as response:
        assert response.status == 302
        login_page = response.headers["Location"]
    async with browser.get(login_page) as response:
        page = await response.text()
    form = first_form(page, login_page)
    assert form is not None and form.method == "POST"
    async with browser.post(form.action, data={**form.fields, "person": person}, allow_redirects=False) as response:
        assert response.status == 303
        callback = response.headers["Location"]
    assert callback.startswith(demo.web + "/.idgate/callback?")
    async with browser.get(callback, allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"] == "/"


async def test_the_demo_person_with_the_group_reaches_the_app_and_logs_out(demo):
    async with browser_session(secure_origins=[demo.web]) as browser:
        await log_in(demo, browser, "alice")
        async with browser.get(demo.web + "/", headers=NAVIGATE, allow_redirects=False) as response:
            assert response.status == 200
            echoed = (await response.json())["headers"]
        assert echoed["X-Idgate-Subject"] == "alice" and echoed["X-Idgate-Groups"] == "operators"
        assert SESSION_COOKIE not in echoed.get("Cookie", "")
        async with browser.post(demo.web + "/.idgate/logout", headers={"Origin": demo.web},
                                allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"].startswith(demo.issuer + "/end-session?")
            end_session = response.headers["Location"]
        async with browser.get(end_session, allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"] == demo.web + "/"
        async with browser.get(demo.web + "/", headers=NAVIGATE, allow_redirects=False) as response:
            assert response.status == 302          # logged out: back to the login page
    actions = [r["action"] for r in await demo.idgate.audit_records() if r["event"] == "session"]
    assert actions == ["login", "logout"]


async def test_the_demo_person_without_the_group_is_403(demo):
    async with browser_session(secure_origins=[demo.web]) as browser:
        await log_in(demo, browser, "mallory")
        async with browser.get(demo.web + "/", headers=NAVIGATE, allow_redirects=False) as response:
            assert response.status == 403

