"""A demo upstream that answers with what it received: method, path, query and headers."""

from __future__ import annotations

from aiohttp import web


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({
        "method": request.method,
        "path": request.raw_path.split("?", 1)[0],
        "query": request.query_string,
        "headers": {k: v for k, v in request.headers.items()},
        "body_bytes": len(body),
    })


def echo_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app
