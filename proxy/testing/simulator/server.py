"""The simulator as a server: the aiohttp app and ``ollama-sim serve``.

:func:`create_app` builds the application with Gin's behaviour around every route (plain-text
404/405 with Gin's ``Allow`` order, no ``Server`` header, an access line, each API's error body)
and answers ``/`` and ``/api/version`` itself. :func:`serve` starts like ``ollama serve`` (its log
lines, the start faults, binding ``OLLAMA_HOST``) and runs until SIGTERM/SIGINT.
:class:`proxy.testing.services.SimulatorProcess` runs ``ollama-sim serve`` as a real subprocess.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from . import anthropic_api, openai_api, responses_api
from .config import VERSION
from .ollama_api import routes as ollama_routes
from .runtime import SIMULATOR, Simulator
from .wire import ApiError, access, error_response, json_response, log

__all__ = ["create_app", "serve"]

_MAX_BODY = 256 * 1024 * 1024
_SHUTDOWN_TIMEOUT = 0.1
_METHOD_ORDER = ("HEAD", "GET", "POST", "DELETE")
"""Gin lists allowed methods in the order its method trees were first registered."""


def _plain(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    """Gin's default 404/405 body: ``text/plain`` without a charset."""
    return web.Response(
        status=status, body=text.encode(), headers={"Content-Type": "text/plain", **(headers or {})}
    )


def _api_error(path: str, exc: ApiError) -> web.Response:
    """``exc`` as the error body of the API that ``path`` belongs to."""
    if path.startswith("/v1/messages"):
        return anthropic_api.error_response(exc)
    if path.startswith("/v1/"):
        return openai_api.error_response(exc)
    return error_response(exc.status, exc.message)


async def _no_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """Go's ``net/http`` sends no ``Server`` header."""
    response.headers.popall("Server", None)


def _gin() -> Middleware:
    """Gin's behaviour around every handler: plain-text 404/405, an access line, and each
    :class:`~proxy.testing.simulator.wire.ApiError` as the error body of its API."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        response: web.StreamResponse
        try:
            response = await handler(request)
        except ApiError as exc:
            response = _api_error(request.path, exc)
        except web.HTTPNotFound:
            response = _plain(404, "404 page not found")
        except web.HTTPMethodNotAllowed as exc:
            allowed = [m for m in _METHOD_ORDER if m in exc.allowed_methods]
            response = _plain(405, "405 method not allowed", {"Allow": ", ".join(allowed)})
        peer = request.remote or ""
        access(response.status, time.perf_counter() - start, peer, request.method, request.path)
        return response

    return middleware


_routes = web.RouteTableDef()


@_routes.get("/")  # Gin registers HEAD for these three only
async def root(request: web.Request) -> web.Response:
    """Liveness: ``Ollama is running``."""
    return web.Response(text="Ollama is running", content_type="text/plain", charset="utf-8")


@_routes.get("/api/version")
async def version(request: web.Request) -> web.Response:
    """``{"version": "..."}``."""
    return json_response({"version": VERSION})


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
    app = web.Application(middlewares=[_gin()], client_max_size=_MAX_BODY)
    app[SIMULATOR] = simulator
    app.on_response_prepare.append(_no_server_header)
    app.add_routes(_routes)
    app.add_routes(ollama_routes)
    app.add_routes(openai_api.routes)
    app.add_routes(responses_api.routes)
    app.add_routes(anthropic_api.routes)
    return app


async def serve(environ: Mapping[str, str]) -> int:
    """Run ``ollama-sim serve`` until SIGTERM/SIGINT; returns the process exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        sim = Simulator.from_env(environ)
    except ValueError as exc:
        sys.stderr.write(f"Error: {exc}\n")
        return 1
    config, faults = sim.config, sim.faults
    env = " ".join(
        f"{k}:{v}" for k, v in sorted(environ.items()) if k.startswith(("OLLAMA_", "SIM_"))
    )
    log("INFO", "routes.go:1574", "server config", env=f"map[{env}]")
    if faults.start_delay > 0:
        try:
            await asyncio.wait_for(stop.wait(), faults.start_delay)
        except TimeoutError:
            pass
        else:
            return 0
    if faults.exit_at_start is not None:
        sys.stderr.write(f"Error: listen tcp {config.address}: simulated start failure\n")
        return faults.exit_at_start
    runner = web.AppRunner(
        create_app(simulator=sim), access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host or None, config.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        reason = (
            "bind: address already in use" if "in use" in str(exc) else str(exc.strerror or exc)
        )
        sys.stderr.write(f"Error: listen tcp {config.address}: {reason}\n")
        return 1
    host, port = runner.addresses[0][:2]
    bound = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    log("INFO", "routes.go:1625", f"Listening on {bound} (version {VERSION}, simulated)")
    await stop.wait()
    await runner.cleanup()
    return 0
