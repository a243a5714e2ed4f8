"""Two idgate instances sharing one session store, as replicas do: the SQLite file of one host and the
DynamoDB table (on a real moto server) of a Deployment.  A login through one is a session on the other, and
a logout on either ends it on both, also the back-channel logout the OP sends to one of them only."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
import yaml

from proxy.sessions.dynamodb_store import table_definition
from tests.harness.browserless import end_session_at_op, login_at_op
from tests.harness.login import NAVIGATE, LoginStack, shared_browser, shared_store_stacks, write_login_config
from tests.harness.moto import REGION
from tests.harness.processes import HOST, eventually, eventually_true, free_port
from tests.harness.servers import RecordingUpstream, serve_app

TABLE = "idgate-sessions"


def store_section(kind: str, request: pytest.FixtureRequest, tmp: Path) -> tuple[dict, Callable[[], None]]:
    """The login.store section of a shared store of this kind, and how to break that store under idgate."""
    if kind == "sqlite":
        path = tmp / "sessions.db"

        def drop_tables() -> None:
            with sqlite3.connect(path) as db:
                db.executescript("DROP TABLE sessions; DROP TABLE claims;")
        return {"path": str(path)}, drop_tables
    request.getfixturevalue("aws_env")              # idgate's own AWS credentials: moto's test keys
    moto = request.getfixturevalue("moto")
    moto.client("dynamodb").create_table(**table_definition(TABLE))
    return ({"type": "dynamodb", "table": TABLE, "region": REGION, "endpoint": moto.url},
            lambda: moto.client("dynamodb").delete_table(TableName=TABLE))


@pytest.fixture(params=["sqlite", "dynamodb"])
async def stacks(request, oidc_provider, tmp_path) -> AsyncIterator[list[LoginStack]]:
    store, _ = store_section(request.param, request, tmp_path)
    async with shared_store_stacks(oidc_provider, tmp_path, store) as running:
        yield running


async def page_status(browser, stack: LoginStack) -> int:
    async with browser.get(stack.url + "/app/page", headers=NAVIGATE, allow_redirects=False) as response:
        return response.status


async def test_a_login_through_one_instance_is_a_session_on_the_other(stacks):
    a, b = stacks
    async with shared_browser(stacks) as browser:
        await a.log_in(browser)
        assert await page_status(browser, b) == 200
        assert await page_status(browser, a) == 200
    seen = b.upstream.received
    assert [r.header("X-Idgate-Subject") for r in seen] == [["alice"], ["alice"]]
    [login] = await a.records("session")
    allowed_on_b = [r for r in await b.records("decision") if r["decision"] == "allow"]
    assert allowed_on_b and allowed_on_b[0]["session"] == login["session"]
    assert await b.records("session") == []


async def test_the_ops_back_channel_logout_to_one_instance_ends_the_session_on_the_other(stacks):
    a, b = stacks
    async with shared_browser(stacks) as browser:
        await a.log_in(browser)
        assert await page_status(browser, b) == 200
        # The user signs out at the OP (another app's logout, say): the OP calls the back-channel logout
        # URI it has, which is instance A's, before it answers the browser.
        end_session = f"{a.op.issuer}/session/end?" + urlencode({"client_id": a.client.client_id})
        await end_session_at_op(browser, end_session)
        assert [r["action"] for r in await a.records("session")] == ["login", "backchannel_logout"]
        assert await page_status(browser, b) == 302
        assert await page_status(browser, a) == 302
    assert len(b.upstream.received) == 1


async def test_logout_on_one_instance_ends_the_session_on_the_other(stacks):
    a, b = stacks
    async with shared_browser(stacks) as browser:
        await a.log_in(browser)
        async with browser.post(b.url + "/.idgate/logout", headers={"Origin": b.url},
                                allow_redirects=False) as response:
            assert response.status == 303
            end_session = response.headers["Location"]
        assert await page_status(browser, a) == 302
        # The OP's back-channel call to A then finds nothing left to end.
        assert (await end_session_at_op(browser, end_session)).startswith(b.url + "/")
        assert await page_status(browser, a) == 302 and await page_status(browser, b) == 302
    assert [r["action"] for r in await b.records("session")] == ["logout"]
    assert b.upstream.received == []


@pytest.mark.parametrize("kind", ["sqlite", "dynamodb"])
async def test_a_shared_store_that_cannot_answer_fails_the_session_closed(kind, request, oidc_provider, tmp_path):
    store, break_store = store_section(kind, request, tmp_path)
    async with shared_store_stacks(oidc_provider, tmp_path, store) as stacks, shared_browser(stacks) as browser:
        a, b = stacks
        await a.log_in(browser)
        break_store()
        async with browser.get(b.url + "/app/page", headers=NAVIGATE, allow_redirects=False) as response:
            assert response.status == 503
            assert (await response.json())["code"] == "unavailable"
        assert b.upstream.received == []
        assert (await b.records("decision"))[-1]["reasons"] == ["session_store_unavailable"]


# -- real processes: `idgate serve --workers 2` on one SQLite file --------------------------------

DEADLINE = 30.0


def fresh_browser(url: str) -> aiohttp.ClientSession:
    """A browser's cookie jar on loopback, and a new connection per request, so SO_REUSEPORT hands the
    requests to either worker."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[url]),
                                 connector=aiohttp.TCPConnector(force_close=True), trust_env=False,
                                 timeout=aiohttp.ClientTimeout(total=10))


def audited(tmp: Path, worker: int) -> list[dict]:
    segment = tmp / "audit" / f"audit.w{worker}.jsonl"
    lines = segment.read_text().splitlines() if segment.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]


@asynccontextmanager
async def two_workers(op, tmp: Path) -> AsyncIterator[tuple[str, str]]:
    port, admin = free_port(), free_port()
    base = f"http://{HOST}:{port}"
    client = op.register_web_client([base + "/.idgate/callback"], post_logout_redirect_uris=[base + "/"],
                                    backchannel_logout_uri=base + "/.idgate/backchannel-logout")
    upstream = RecordingUpstream()
    async with serve_app(upstream.app()) as upstream_port:
        config = write_login_config(tmp, op, client, port, upstream_port, store={"path": str(tmp / "sessions.db")})
        written = yaml.safe_load(config.read_text())
        written["admin"]["port"] = admin            # --workers needs fixed ports
        config.write_text(yaml.safe_dump(written, sort_keys=False))
        with (tmp / "stderr.log").open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy", "serve", "--config", str(config), "--workers", "2",
                stdout=asyncio.subprocess.DEVNULL, stderr=stderr)
        try:
            async with aiohttp.ClientSession(trust_env=False) as http:
                async def both_ready() -> bool:
                    try:
                        async with http.get(f"http://{HOST}:{admin}/readyz") as response:
                            body = await response.json()
                            return response.status == 200 and body["workers"]["running"] == 2
                    except (aiohttp.ClientError, ValueError):
                        return process.returncode is not None      # exited: stop polling, fail below
                await eventually_true(both_ready, "both workers ready", timeout=DEADLINE)
                assert process.returncode is None, (tmp / "stderr.log").read_text()[-2000:]
            yield base, client.client_id
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), DEADLINE) == 0, (tmp / "stderr.log").read_text()[-2000:]


async def test_two_workers_on_one_sqlite_file_share_the_session_and_its_back_channel_logout(oidc_provider, tmp_path):
    async with two_workers(oidc_provider, tmp_path) as (base, client_id), fresh_browser(base) as browser:
        async with browser.get(base + "/app/page", headers=NAVIGATE, allow_redirects=False) as response:
            callback = await login_at_op(browser, response.headers["Location"], "alice")
        async with browser.get(callback, allow_redirects=False) as response:
            assert response.status == 303

        def records(action: str) -> list[tuple[int, dict]]:
            return [(w, r) for w in (0, 1) for r in audited(tmp_path, w) if r.get("action") == action]
        await eventually(lambda: bool(records("login")), "the login audited", timeout=DEADLINE)
        [(_, login)] = records("login")

        def allowed_on(worker: int) -> bool:
            return any(r["event"] == "decision" and r["decision"] == "allow" and r.get("session") == login["session"]
                       for r in audited(tmp_path, worker))

        async def served_by_both() -> bool:
            async with browser.get(base + "/app/page", headers=NAVIGATE, allow_redirects=False) as response:
                assert response.status == 200
            return allowed_on(0) and allowed_on(1)
        await eventually_true(served_by_both, "the session served by both workers", timeout=DEADLINE)

        # Signed out at the OP: its back-channel call reaches one worker, the session ends on both.
        await end_session_at_op(browser, f"{oidc_provider.issuer}/session/end?" + urlencode({"client_id": client_id}))
        await eventually(lambda: bool(records("backchannel_logout")), "the back-channel logout audited",
                         timeout=DEADLINE)
        assert len(records("backchannel_logout")) == 1
        for _ in range(24):
            async with browser.get(base + "/app/page", headers=NAVIGATE, allow_redirects=False) as response:
                assert response.status == 302
