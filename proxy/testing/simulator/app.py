"""The aiohttp application: routes plus Gin's behaviour (host check, 404/405, access log)."""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from . import manage_routes, ollama_routes, openai_routes
from .logs import access
from .runtime import SIMULATOR, Simulator

__all__ = ["create_app"]

_MAX_BODY = 256 * 1024 * 1024
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


def _host_allowed(header: str) -> bool:
    """Ollama's ``allowedHostsMiddleware`` test for a server bound to loopback."""
    host = header
    if header.startswith("["):
        host = header[1 : header.find("]")]
    elif header.count(":") == 1:
        host = header.split(":")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        host = host.lower()
        return host in {"", "localhost", socket.gethostname().lower()} or host.endswith(
            _LOCAL_SUFFIXES
        )
    return ip.is_loopback or ip.is_private or ip.is_unspecified


def _gin(sim: Simulator) -> Middleware:
    loopback = sim.config.loopback

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        response: web.StreamResponse
        if loopback and not _host_allowed(request.host):
            response = web.Response(status=403)
        else:
            try:
                response = await handler(request)
            except web.HTTPNotFound:
                response = web.Response(
                    status=404, text="404 page not found", content_type="text/plain"
                )
            except web.HTTPMethodNotAllowed as exc:
                response = web.Response(
                    status=405,
                    text="405 method not allowed",
                    content_type="text/plain",
                    headers={"Allow": ", ".join(sorted(exc.allowed_methods))},
                )
        peer = request.remote or ""
        access(response.status, time.perf_counter() - start, peer, request.method, request.path)
        return response

    return middleware


def create_app(
    environ: Mapping[str, str] | None = None, *, simulator: Simulator | None = None
) -> web.Application:
    """Build the simulator application.

    Args:
        environ: ``OLLAMA_*``/``SIM_*`` settings (default ``os.environ``), for in-process use
            such as ``aiohttp.test_utils.TestServer``; point ``OLLAMA_MODELS`` at a temporary
            directory. Such an app raises instead of exiting on ``SIM_CRASH_AFTER``.
        simulator: pre-built state (``ollama-sim serve`` passes its own); ``environ`` is then
            ignored.
    """
    if simulator is None:
        simulator = Simulator.from_env(os.environ if environ is None else environ)
        simulator.allow_exit = False
    app = web.Application(middlewares=[_gin(simulator)], client_max_size=_MAX_BODY)
    app[SIMULATOR] = simulator
    app.add_routes(ollama_routes.routes)
    app.add_routes(manage_routes.routes)
    app.add_routes(openai_routes.routes)
    return app
