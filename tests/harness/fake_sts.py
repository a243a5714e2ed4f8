"""A tiny STS stand-in for what moto cannot do: throttle, hang, or answer with expired credentials.
It speaks the STS Query protocol (form POST in, XML out) so idgate's real botocore client talks to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

from aiohttp import web

from tests.harness.processes import HOST
from tests.harness.servers import serve_app

_NS = "https://sts.amazonaws.com/doc/2011-06-15/"


def _credentials_xml(action: str, expiration: datetime, n: int) -> str:
    stamp = expiration.strftime("%Y-%m-%dT%H:%M:%SZ")
    return (f'<{action}Response xmlns="{_NS}"><{action}Result><Credentials>'
            f"<AccessKeyId>ASIAFAKE{n:012d}</AccessKeyId><SecretAccessKey>fake-secret-{n}</SecretAccessKey>"
            f"<SessionToken>fake-token-{n}</SessionToken><Expiration>{stamp}</Expiration></Credentials>"
            "<AssumedRoleUser><AssumedRoleId>AROAFAKE:s</AssumedRoleId>"
            "<Arn>arn:aws:sts::123456789012:assumed-role/r/s</Arn></AssumedRoleUser>"
            f"</{action}Result><ResponseMetadata><RequestId>fake-{n}</RequestId></ResponseMetadata></{action}Response>")


def _error_xml(code: str) -> str:
    return (f'<ErrorResponse xmlns="{_NS}"><Error><Type>Sender</Type><Code>{code}</Code>'
            f"<Message>{code} (fake STS)</Message></Error><RequestId>fake</RequestId></ErrorResponse>")


@dataclass
class FakeSts:
    """`script` is consumed one entry per request: "ok", "expired", "hang" or an error code such as
    "Throttling" (answered 400).  When the script is empty, `then` applies."""

    script: list[str] = field(default_factory=list)
    then: str = "ok"
    actions: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)   # set at teardown: hung requests end
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            form = {k: v[0] for k, v in parse_qs(await request.text()).items()}
            action = form.get("Action", "")
            self.actions.append(action)
            step = self.script.pop(0) if self.script else self.then
            if step == "hang":
                await self.release.wait()
                step = "ok"
            if step in ("ok", "expired"):
                lifetime = timedelta(hours=1) if step == "ok" else timedelta(minutes=-5)
                return web.Response(text=_credentials_xml(action, datetime.now(UTC) + lifetime, len(self.actions)),
                                    content_type="text/xml")
            return web.Response(status=400, text=_error_xml(step), content_type="text/xml")

        app = web.Application()
        app.router.add_post("/", handle)
        return app


@asynccontextmanager
async def fake_sts(**kwargs: object) -> AsyncIterator[FakeSts]:
    sts = FakeSts(**kwargs)  # type: ignore[arg-type]
    async with serve_app(sts.app()) as port:
        sts.port = port
        try:
            yield sts
        finally:
            sts.release.set()   # before the server stops, so a hung handler ends
