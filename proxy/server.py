"""Run the proxy (``python -m proxy serve``) and the one-shot ``pull``.

:func:`run` wires the pieces and owns the process's signals; nothing else touches them.
Shutdown has one fixed order:

1. SIGTERM or SIGINT sets an event (a second one forces the exit: the Ollama process group is
   killed and the process exits with 128 + the signal number at once);
2. the listening socket is closed: no new connections;
3. ``state.set_stopping()``: ``/readyz`` answers 503 and new requests on kept-alive
   connections are refused;
4. in-flight requests may finish for up to ``SHUTDOWN_GRACE`` seconds, then are cancelled
   (``AppRunner.cleanup``; see :func:`drain_timeout` for how the grace maps onto aiohttp's
   ``shutdown_timeout``);
5. the application's cleanup runs, the supervisor's last: ``ollama serve`` is stopped (SIGTERM
   to its group, grace, SIGKILL);
6. exit status 0.

When Ollama fails for good before it was ever ready, the proxy does *not* exit: it keeps
serving, so that ``/readyz`` can tell operators (and the UbiOps deployment) why, with the exit
status and Ollama's last stderr lines. Exiting would only turn a precise reason into a restart
loop of the whole instance with the reason buried in old logs.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from proxy.app import create_app
from proxy.appkeys import METRICS
from proxy.config import Settings
from proxy.logs import configure_logging, get_logger
from proxy.ollama import resolve_executable
from proxy.runner import ProxyRunner
from proxy.state import InstanceState, ModelStatus
from proxy.supervisor import Supervisor

__all__ = ["EXIT_FAILURE", "EXIT_OK", "drain_timeout", "pull", "run"]

EXIT_OK = 0
EXIT_FAILURE = 1

_MIN_DRAIN_TIMEOUT = 0.001
"""aiohttp reads a shutdown timeout of 0 as "no timeout": the smallest real one (seconds)."""
_OLLAMA_DEFAULT_PORT = 11434
"""Ollama's own default port, also the proxy's default ``PROXY_PORT``."""

log = get_logger(__name__)


def run(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT; return the exit status.

    Raises:
        ConfigError: ``OLLAMA_BIN`` names no executable.
    """
    _configure(settings)
    executable = resolve_executable(settings.ollama_bin)
    return _run_loop(_serve(settings, executable))


def pull(settings: Settings) -> int:
    """Start Ollama, pull the configured models (no warm-up), stop it.

    Returns 0 when every configured model is present, else 1. Used at image build time to
    bake models into the image; ``READY_TIMEOUT`` bounds the whole run.

    Raises:
        ConfigError: ``OLLAMA_BIN`` names no executable.
    """
    _configure(settings)
    executable = resolve_executable(settings.ollama_bin)
    return _run_loop(_pull(settings, executable))


async def _serve(settings: Settings, executable: str) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    supervisor_ref: list[Supervisor] = []

    def on_signal(signum: signal.Signals) -> None:
        if not stop.is_set():
            log.info("signal received; shutting down", signal=signum.name)
            stop.set()
            return
        log.warning("second signal; forcing exit", signal=signum.name)
        for supervisor in supervisor_ref:
            supervisor.kill_now()
        sys.stderr.flush()
        os._exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        state = InstanceState(settings.catalog, preload=settings.preload_models)
        app = create_app(settings, state)
        supervisor = Supervisor(
            settings, state, executable=executable, on_pull=app[METRICS].observe_pull
        )
        supervisor_ref.append(supervisor)
        app.cleanup_ctx.append(supervisor.cleanup_ctx)
        runner = ProxyRunner(
            app,
            shutdown_timeout=drain_timeout(settings.shutdown_grace),
            # Also how long a client may take to send its headers: slow clients are cut off.
            keepalive_timeout=settings.proxy_client_timeout,
        )
        await runner.setup()
        site = web.TCPSite(runner, host=settings.bind_host, port=settings.proxy_port)
        try:
            await site.start()
        except OSError as exc:
            log.error(
                "cannot listen",
                host=settings.bind_host,
                port=settings.proxy_port,
                error=str(exc),
                **_listen_hint(exc, settings.proxy_port),
            )
            await runner.cleanup()
            return EXIT_FAILURE
        if not settings.proxy_api_key:
            log.warning(
                "PROXY_API_KEY is not set: listening on 127.0.0.1 only, without authentication",
                port=settings.proxy_port,
            )
        log.info("listening", host=settings.bind_host, port=settings.proxy_port)
        await stop.wait()
        await site.stop()
        state.set_stopping()
        await runner.cleanup()
        log.info("stopped")
        return EXIT_OK
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def _pull(settings: Settings, executable: str) -> int:
    state = InstanceState(settings.catalog, preload=False)
    async with Supervisor(settings, state, executable=executable, warm=False) as supervisor:
        try:
            await asyncio.wait_for(supervisor.wait_settled(), settings.ready_timeout)
        except TimeoutError:
            log.error("pull did not finish within READY_TIMEOUT", timeout=settings.ready_timeout)
    missing = {
        tag: model.reason or str(model.status)
        for tag, model in state.models.items()
        if model.status not in (ModelStatus.PRESENT, ModelStatus.READY)
    }
    if supervisor.fatal is not None:
        log.error("pull failed: Ollama did not start", reason=supervisor.fatal.reason)
        return EXIT_FAILURE
    if missing:
        log.error("pull failed", missing=missing)
        return EXIT_FAILURE
    log.info("all models present", models=list(state.models))
    return EXIT_OK


def _listen_hint(exc: OSError, port: int) -> dict[str, str]:
    """What to do about a port that is taken (the ``hint`` of the "cannot listen" line)."""
    if exc.errno != errno.EADDRINUSE:
        return {}
    if port == _OLLAMA_DEFAULT_PORT:
        return {
            "hint": f"port {port} is in use, maybe by an Ollama (it is Ollama's own default "
            "port): set PROXY_PORT to a free port"
        }
    return {"hint": f"port {port} is in use: set PROXY_PORT to a free port"}


def drain_timeout(grace: float) -> float:
    """The ``AppRunner`` ``shutdown_timeout`` that gives in-flight requests ``grace`` seconds.

    aiohttp (3.x) drains each connection in two phases of up to ``shutdown_timeout`` each: it
    waits for the handler, then cancels the *request body* and waits for the handler again, and
    only then cancels the handler task. A streaming handler does not read the body, so it runs
    through both phases: half the grace each. A timeout of 0 would mean "wait forever" to
    aiohttp, so zero grace becomes the smallest positive timeout.
    """
    return max(grace / 2, _MIN_DRAIN_TIMEOUT)


def _configure(settings: Settings) -> None:
    secrets = (settings.proxy_api_key, settings.proxy_admin_key)
    configure_logging(settings.log_format, settings.log_level, secrets=secrets, component="proxy")


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on uvloop when it is installed, else on asyncio's loop."""
    runner: Callable[[Coroutine[Any, Any, int]], int]
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    else:
        runner = uvloop.run
    return runner(main)
