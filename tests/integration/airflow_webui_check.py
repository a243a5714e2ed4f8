"""Airflow 3's API server (the UI's backend) behind idgate with browser login, for real: the auth manager of
deploy/airflow/webui in Airflow's own `airflow api-server`, idgate's login against the real OP, the person
played by the browserless harness.  Airflow knows who idgate says, gives the role their groups earn, knows
nobody who comes around idgate, and forgets the person when idgate does.

Run with `make test-airflow` (Airflow from .venv-airflow, as airflow_dag_check.py); not part of `make test`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness.browserless import browser_session, end_session_at_op, login_at_op
from tests.harness.login import NAVIGATE, write_login_config
from tests.harness.oidc_provider import OidcProvider
from tests.harness.paths import DEPLOY, REPO
from tests.harness.processes import HOST, ServerProcess, eventually_true, free_port
from tests.harness.servers import RunningIdgate, running_idgate

AIRFLOW_PYTHON = Path(os.environ.get("IDGATE_AIRFLOW_PYTHON", REPO / ".venv-airflow" / "bin" / "python"))
AIRFLOW = AIRFLOW_PYTHON.parent / "airflow"
JSON = {"Accept": "application/json"}
# idgate lets anyone the issuer knows reach the UI: what they may do there is Airflow's role, from their groups.
POLICY = """\
rules:
  - id: airflow-ui
    who: {issuer: "%s"}
    http:
      - methods: [GET, HEAD, POST, PUT, PATCH, DELETE]
        paths: ["/", "/**"]
"""


def airflow_env(home: Path, jwks_url: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"], "HOME": str(home), "AIRFLOW_HOME": str(home),
        "PYTHONPATH": str(DEPLOY / "airflow" / "webui"),       # as $AIRFLOW_HOME/config would be
        "AIRFLOW__CORE__AUTH_MANAGER": "idgate_auth_manager.IdgateAuthManager",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__IDGATE__JWKS_URL": jwks_url,
        "AIRFLOW__IDGATE__ROUTE": "app",                       # tests/harness/login.py names its route `app`
        "AIRFLOW__IDGATE__USER_GROUPS": "data-eng",
    }


@pytest.fixture
async def idgate(oidc_provider: OidcProvider, tmp_path: Path) -> AsyncIterator[tuple[RunningIdgate, int]]:
    port, airflow_port = free_port(), free_port()
    base = f"http://{HOST}:{port}"
    client = oidc_provider.register_web_client([base + "/.idgate/callback"], post_logout_redirect_uris=[base + "/"])
    config = write_login_config(tmp_path, oidc_provider, client, port, airflow_port)
    (tmp_path / "policies" / "app.yaml").write_text(POLICY % oidc_provider.issuer)
    async with running_idgate(config) as running:
        yield running, airflow_port


@pytest.fixture
async def airflow(idgate: tuple[RunningIdgate, int], tmp_path: Path) -> AsyncIterator[str]:
    """Airflow's API server on loopback, its database migrated; its URL.  Stopped at teardown."""
    assert AIRFLOW.exists(), f"{AIRFLOW} is missing: run `make test-airflow`"
    running, port = idgate
    env = airflow_env(tmp_path / "airflow", running.admin_url + "/.well-known/jwks.json")
    (tmp_path / "airflow").mkdir()
    migrate = await asyncio.create_subprocess_exec(str(AIRFLOW), "db", "migrate", env=env, cwd=tmp_path,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(300):
        output, _ = await migrate.communicate()
    assert migrate.returncode == 0, output.decode()[-3000:]
    server = ServerProcess("airflow-api-server", workdir=tmp_path)
    server.start([str(AIRFLOW), "api-server", "-H", HOST, "-p", str(port), "-w", "1", "--apps", "core"], env=env)
    url = f"http://{HOST}:{port}"
    try:
        async with aiohttp.ClientSession() as probe:
            async def healthy() -> bool:
                server.check_alive()
                try:
                    async with probe.get(url + "/api/v2/monitor/health") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False
            await eventually_true(healthy, "Airflow's API server answering", timeout=180)
        yield url
    finally:
        server.stop()


async def log_in(browser: aiohttp.ClientSession, base: str, user: str) -> None:
    async with browser.get(base + "/", headers=NAVIGATE, allow_redirects=False) as response:
        assert response.status == 302, await response.text()
        authorize = response.headers["Location"]
    callback = await login_at_op(browser, authorize, user)
    async with browser.get(callback, allow_redirects=False) as response:
        assert response.status == 303, await response.text()


async def get(browser: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, Any]:
    async with browser.get(url, headers={**JSON, **headers}, allow_redirects=False) as response:
        if 300 <= response.status < 400:
            return response.status, response.headers["Location"]
        return response.status, await response.json(content_type=None)


async def test_airflow_knows_whom_idgate_says_and_nobody_around_it(idgate, airflow):
    running, _ = idgate
    base = running.url
    async with browser_session(secure_origins=[base]) as browser:
        # No idgate session: idgate answers, Airflow is never asked.
        assert (await get(browser, base + "/ui/auth/me"))[0] == 401
        await log_in(browser, base, "alice")
        assert await get(browser, base + "/ui/auth/me") == (200, {"id": "alice", "username": "alice"})
        # data-eng is Airflow's USER role here: DAGs yes, variables (OP) no.
        assert (await get(browser, base + "/api/v2/dags"))[0] == 200
        assert (await get(browser, base + "/api/v2/variables"))[0] == 403
        # Airflow's login page sends a known person straight back.
        assert await get(browser, base + "/auth/login?next=/dags") == (303, "/dags")

        # Around idgate, whatever is claimed: nobody.  (A captured assertion replayed there would still be
        # believed until it expires: the reason Airflow must be reachable only through idgate.)
        async with aiohttp.ClientSession() as direct:
            for headers in ({}, {"X-Idgate-Subject": "alice", "Cookie": "_token=forged"},
                            {"X-Idgate-Assertion": "e30.e30.forged"}):
                assert (await get(direct, airflow + "/ui/auth/me", **headers))[0] == 401, headers
            assert (await get(direct, airflow + "/auth/login"))[0] == 401

        # Airflow's logout hands over to idgate's; once idgate forgets alice, so does Airflow.
        assert await get(browser, base + "/api/v2/auth/logout") == (307, "/.idgate/logout")
        async with browser.post(base + "/.idgate/logout", headers={"Origin": base}, allow_redirects=False) as response:
            assert response.status == 303
            await end_session_at_op(browser, response.headers["Location"])
        assert (await get(browser, base + "/ui/auth/me"))[0] == 401


async def test_a_person_whose_groups_have_no_airflow_role_is_refused(idgate, airflow):
    running, _ = idgate
    async with browser_session(secure_origins=[running.url]) as browser:
        await log_in(browser, running.url, "bob")          # idgate lets bob in; his groups map to no role
        assert (await get(browser, running.url + "/ui/auth/me"))[0] == 401
        status, body = await get(browser, running.url + "/auth/login")
        assert status == 403 and body["detail"] == "none of your groups has a role in Airflow"
