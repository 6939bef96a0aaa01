"""The bench's Python floor: the least a reverse proxy built on aiohttp does.

``python -m bench.bare_hop PORT BACKEND_URL`` forwards each request's method, path, query and
body to the backend over a keep-alive pool, and relays the answer's status, content type and
body piece by piece as it arrives. The same libraries and event loop as the proxy (aiohttp on
uvloop) and nothing else: no auth, no parsing, no policy, no log, no metrics. What the proxy
spends beyond this hop is the cost of its own features; what this hop spends beyond nginx is
the cost of a Python hop (:class:`bench.stack.BareHopStack` runs it).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

_SESSION = web.AppKey("session", aiohttp.ClientSession)


def make_app(backend_url: str) -> web.Application:
    """An app that forwards every request to ``backend_url``."""
    backend = backend_url.rstrip("/")

    async def session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as client:
            app[_SESSION] = client
            yield

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        content_type = request.headers.get("Content-Type")
        headers = {"Content-Type": content_type} if content_type else {}
        async with request.app[_SESSION].request(
            request.method, backend + request.path_qs, data=body, headers=headers
        ) as upstream:
            response = web.StreamResponse(
                status=upstream.status,
                headers={"Content-Type": upstream.headers.get("Content-Type", "text/plain")},
            )
            await response.prepare(request)
            async for piece in upstream.content.iter_any():
                await response.write(piece)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{path:.*}", forward)
    return app


def main(argv: list[str] | None = None) -> None:
    port, backend_url = (argv if argv is not None else sys.argv[1:])[:2]
    web.run_app(
        make_app(backend_url),
        host="127.0.0.1",
        port=int(port),
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
