"""The simulator as a server: the aiohttp app, ``ollama-sim serve``, and a subprocess handle.

:func:`create_app` builds the application with Gin's behaviour around every route (plain-text
404/405, an access line) and answers ``/`` and ``/api/version`` itself. :func:`serve` starts
like ``ollama serve`` (its log lines, the start faults, binding ``OLLAMA_HOST``) and runs until
SIGTERM/SIGINT. :class:`SimulatorProcess` runs
``ollama-sim serve`` as a real subprocess for tests of anything that talks to Ollama.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..net import free_port
from .config import VERSION
from .ollama_api import routes as ollama_routes
from .openai_api import error_response as openai_error
from .openai_api import routes as openai_routes
from .runtime import SIMULATOR, Simulator
from .wire import ApiError, access, error_response, json_response, log

__all__ = ["SimulatorExited", "SimulatorProcess", "create_app", "default_command", "serve"]

_MAX_BODY = 256 * 1024 * 1024
_SHUTDOWN_TIMEOUT = 0.1
_POLL = 0.02
_READY_TIMEOUT = 15.0
_STOP_TIMEOUT = 5.0


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


class SimulatorExited(RuntimeError):
    """The simulator exited before it answered; ``returncode`` and ``logs`` say why."""

    def __init__(self, returncode: int, logs: str) -> None:
        super().__init__(f"ollama-sim exited with status {returncode} before it was ready:\n{logs}")
        self.returncode = returncode
        self.logs = logs


def default_command() -> list[str]:
    """``ollama-sim`` next to this interpreter, else ``python -m proxy.testing.simulator``."""
    script = Path(sys.executable).with_name("ollama-sim")
    return [str(script)] if script.exists() else [sys.executable, "-m", "proxy.testing.simulator"]


class SimulatorProcess:
    """One ``ollama-sim serve`` subprocess on a free loopback port.

    Use it as a context manager, sync or async; it starts on entry (waiting until ``GET /``
    answers unless ``wait_ready=False``) and stops on exit::

        async with SimulatorProcess({"SIM_TOKEN_DELAY": "0.01"}) as sim:
            client = ollama.AsyncClient(host=sim.url)

    Args:
        env: extra environment (``SIM_*``, ``OLLAMA_*``); overrides the inherited environment.
        models_dir: ``OLLAMA_MODELS``; default a fresh temporary directory owned by this object.
            Pass the same directory to a second instance to simulate a restart with baked models.
        wait_ready: whether starting waits until the server answers (at most 15 s).

    Attributes ``url`` (``http://127.0.0.1:<port>``), ``port`` (kept across restarts),
    ``returncode`` and ``models_dir`` describe the process; :meth:`logs` returns its output so
    far (kept in a file, so the pipe never fills up). Stopping sends SIGTERM, then SIGKILL
    after 5 s. The async methods run the blocking ones in a thread.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        models_dir: Path | None = None,
        wait_ready: bool = True,
    ) -> None:
        self._workdir = tempfile.TemporaryDirectory(prefix="ollama-sim-")
        work = Path(self._workdir.name)
        inherited = (env or {}).get("OLLAMA_MODELS")
        self.models_dir = models_dir or (Path(inherited) if inherited else work / "models")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_path = work / "ollama-sim.log"
        self._env = {
            **os.environ,
            **(env or {}),
            "OLLAMA_MODELS": str(self.models_dir),
            "OLLAMA_HOST": f"127.0.0.1:{self.port}",
        }
        self._wait_ready = wait_ready
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def returncode(self) -> int | None:
        """Exit status once the process ended, else ``None``."""
        return None if self._proc is None else self._proc.poll()

    def logs(self) -> str:
        """Everything the process wrote so far."""
        return self._log_path.read_text(errors="replace") if self._log_path.exists() else ""

    def send_signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the process (ignored if it already exited)."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signum)

    def start(self) -> Self:
        """Spawn, then (if ``wait_ready``) block until ``GET /`` answers 200.

        Raises:
            SimulatorExited: the process ended first.
            TimeoutError: not ready within 15 s.
        """
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("ollama-sim is already running")
        self._close_log()
        self._log = self._log_path.open("ab")
        self._proc = proc = subprocess.Popen(
            [*default_command(), "serve"],
            env=self._env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + _READY_TIMEOUT
        while self._wait_ready and not self._probe():
            code = proc.poll()
            if code is not None:
                raise SimulatorExited(code, self.logs())
            if time.monotonic() > deadline:
                raise TimeoutError(f"ollama-sim not ready within {_READY_TIMEOUT}s:\n{self.logs()}")
            time.sleep(_POLL)
        return self

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 5 s; returns the exit status."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self.send_signal(signal.SIGTERM)
            try:
                proc.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.send_signal(signal.SIGKILL)
                proc.wait()
        self._close_log()
        return proc.returncode

    async def astart(self) -> Self:
        """Async :meth:`start`."""
        return await asyncio.to_thread(self.start)

    async def astop(self) -> int | None:
        """Async :meth:`stop`."""
        return await asyncio.to_thread(self.stop)

    async def arestart(self) -> Self:
        """Stop, then start again on the same port with the same models and environment."""
        await self.astop()
        return await self.astart()

    async def await_exit(self) -> int:
        """Wait until the process exits; returns its status (bound it with ``asyncio.timeout``)."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("ollama-sim has not been started")
        while True:
            code = proc.poll()
            if code is not None:
                return code
            await asyncio.sleep(_POLL)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

    def _probe(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1.0)
        try:
            conn.request("GET", "/")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
