"""The simulator as a server: the aiohttp app, ``ollama-sim serve``, and a subprocess handle.

:func:`create_app` builds the application with Gin's behaviour around every route (plain-text
404/405, an access line) and answers ``/`` and ``/api/version`` itself. :func:`serve` starts
like ``ollama serve`` (its log lines, the start faults, binding ``OLLAMA_HOST``) and runs until
SIGTERM/SIGINT. :class:`SimulatorProcess` runs
``ollama-sim serve`` as a real subprocess for tests of anything that talks to Ollama.
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

from .config import VERSION
from .ollama_api import routes as ollama_routes
from .openai_api import error_response as openai_error
from .openai_api import routes as openai_routes
from .runtime import SIMULATOR, Simulator
from .wire import ApiError, access, error_response, json_response, log

__all__ = ["create_app", "serve"]

_MAX_BODY = 256 * 1024 * 1024
_SHUTDOWN_TIMEOUT = 0.1


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
            openai = request.path.startswith("/v1/")
            response = (openai_error if openai else error_response)(exc.status, exc.message)
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


_routes = web.RouteTableDef()


@_routes.get("/")
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
    app.add_routes(_routes)
    app.add_routes(ollama_routes)
    app.add_routes(openai_routes)
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
