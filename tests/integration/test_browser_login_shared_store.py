"""Two idgate instances sharing one session store, as replicas do: the SQLite file of one host and the
DynamoDB table (on a real moto server) of a Deployment.  A login through one is a session on the other, and
a logout on either ends it on both, also the back-channel logout the OP sends to one of them only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlencode

import pytest

from proxy.sessions.dynamodb_store import table_definition
from tests.harness.browserless import end_session_at_op
from tests.harness.login import NAVIGATE, LoginStack, shared_browser, shared_store_stacks
from tests.harness.moto import REGION

TABLE = "idgate-sessions"


@pytest.fixture(params=["sqlite", "dynamodb"])
async def stacks(request, oidc_provider, tmp_path) -> AsyncIterator[list[LoginStack]]:
    if request.param == "sqlite":
        store = {"path": str(tmp_path / "sessions.db")}
    else:
        request.getfixturevalue("aws_env")          # idgate's own AWS credentials: moto's test keys
        moto = request.getfixturevalue("moto")
        moto.client("dynamodb").create_table(**table_definition(TABLE))
        store = {"type": "dynamodb", "table": TABLE, "region": REGION, "endpoint": moto.url}
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
