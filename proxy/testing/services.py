"""The services tests and benchmarks run for real: each an HTTP server in a subprocess of its
own session on loopback, its output in a log file, started until a readiness path answers and
stopped SIGTERM → SIGKILL with its whole process group.

* :class:`ProxyProcess`: ``python -m proxy serve`` (see :func:`~proxy.testing.harness.proxy_env`);
* :class:`SimulatorProcess`: ``ollama-sim serve``, the Ollama simulator.

They need ``psutil`` (a dev dependency) only for :meth:`ProxyProcess.ollama`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Self, TypeVar

from proxy.testing.harness import (
    HTTP_TIMEOUT,
    HarnessError,
    free_port,
    http_json,
    simulator_command,
    wait_until,
)
from proxy.testing.simulator.runtime import read_pull_log

__all__ = ["ProxyProcess", "ServiceExited", "ServiceProcess", "SimulatorProcess"]

__test__ = False

STOP_GRACE = 10.0
"""How long a stopped service may take to exit after SIGTERM before SIGKILL (seconds)."""

T = TypeVar("T")


class ServiceExited(HarnessError):
    """A service exited when it should have run; ``returncode`` and ``logs`` say how."""

    def __init__(self, service: str, returncode: int, logs: str) -> None:
        tail = "\n".join(logs.splitlines()[-15:])
        super().__init__(f"{service} exited with {returncode}; log tail:\n{tail}")
        self.returncode = returncode
        self.logs = logs


class ServiceProcess:
    """One HTTP service as a real subprocess; a context manager, sync or async.

    Args:
        argv: the command.
        env: its whole environment.
        url: its base URL.
        log_path: where its stdout and stderr go (appended); a temporary file by default.
        ready_path: the path that answers 200 once it is ready.
        listening: what its log shows once it listens on its own port. Ready needs that too:
            a 200 from another process that holds the port (a port picked by
            :func:`~proxy.testing.harness.free_port` can be taken by then) is not this service.
        cwd: its working directory.
    """

    ready_timeout = 30.0
    """How long :meth:`start` waits for the service to be ready (seconds)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        url: str,
        log_path: Path | None = None,
        ready_path: str = "/",
        listening: re.Pattern[str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.url = url
        if log_path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="service-")
            log_path = Path(self._tmp.name) / "service.log"
        self.log_path = log_path
        self.ready_path = ready_path
        self._listening = listening
        self._cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0
        self._log_start = 0

    def __repr__(self) -> str:  # never the environment: it holds keys
        return f"{type(self).__name__}(pid={self.pid}, url={self.url})"

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise HarnessError(f"{self.argv[0]} was never started")
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once it ended, else None."""
        return None if self.popen is None else self.popen.poll()

    def spawn(self) -> Self:
        """Start the process without waiting for it."""
        if self.popen is not None and self.popen.poll() is None:
            raise HarnessError(f"{self!r} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log: IO[bytes]
        with self.log_path.open("ab") as log:
            self._log_start = log.tell()
            self.spawned_at = time.monotonic()
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self._cwd,
            )
        return self

    def start(self) -> Self:
        """Spawn, then wait until it is ready (see :meth:`wait_ready`)."""
        self.spawn()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def get(self, path: str, timeout: float = HTTP_TIMEOUT) -> tuple[int, Any]:
        """``GET`` a path of the service: ``(status, JSON or text)``; ``(0, error)`` if none."""
        return http_json(self.url + path, timeout=timeout)

    def wait_ready(self, timeout: float | None = None) -> Any:
        """Block until :attr:`ready_path` answers 200; return its body.

        Raises:
            HarnessError: the process exited first, or it is not ready in time.
        """

        def ready() -> Any:
            self.check_running()
            status, body = self.get(self.ready_path, timeout=1.0)
            return body if status == 200 and self._listens() else None

        limit = self.ready_timeout if timeout is None else timeout
        return self._waiting(ready, limit, f"{self.url}{self.ready_path} to answer 200")

    def _listens(self) -> bool:
        """Whether this run's log says it listens on its own port (see ``listening``)."""
        if self._listening is None:
            return True
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            return self._listening.search(log.read().decode(errors="replace")) is not None

    def wait_exit(self, timeout: float = STOP_GRACE) -> int:
        """Block until the process exits; its status."""
        try:
            return self._proc().wait(timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(
                f"{self!r} did not exit within {timeout:g} s{self._tail()}"
            ) from None

    def check_running(self) -> None:
        """Raise :class:`ServiceExited` if the process has exited."""
        code = self._proc().poll()
        if code is not None:
            raise ServiceExited(repr(self), code, self.log_text())

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the process (not its group); a gone process is no error."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM, up to ``grace`` seconds, then SIGKILL to the whole group; the exit status."""
        popen = self.popen
        if popen is None:
            return None
        if popen.poll() is None:
            self.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(grace)
        return popen.returncode

    def log_text(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[str]:
        return self.log_text().splitlines()

    def events(self) -> list[dict[str, Any]]:
        """The lines of its log that are JSON objects (structured log events)."""
        events = []
        for line in self.log_lines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append(event)
        return events

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_lines()[-lines:])

    async def astart(self) -> Self:
        """:meth:`start` in a thread."""
        return await asyncio.to_thread(self.start)

    async def astop(self) -> int | None:
        """:meth:`stop` in a thread."""
        return await asyncio.to_thread(self.stop)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(self, *_exc: object) -> None:
        await self.astop()

    def _proc(self) -> subprocess.Popen[bytes]:
        if self.popen is None:
            raise HarnessError(f"{self.argv[0]} was never started")
        return self.popen

    def _tail(self) -> str:
        return f"; log tail:\n{self.log_tail()}" if self.log_path.exists() else ""

    def _waiting(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        try:
            return wait_until(predicate, timeout, what)
        except ServiceExited:
            raise
        except HarnessError as exc:
            raise HarnessError(f"{exc}{self._tail()}") from None


def _proxy_listening(port: int, log_level: str) -> re.Pattern[str] | None:
    """The proxy's ``listening`` event for ``port`` (an info event: None below that level)."""
    if log_level.strip().lower() not in ("debug", "info"):
        return None
    return re.compile(rf"(?m)^(?=.*\blistening\b)(?=.*\bport\W{{1,3}}{port}\b)")


class ProxyProcess(ServiceProcess):
    """``python -m proxy <command>`` as a real subprocess, ready when ``/readyz`` says so.

    Its :attr:`ready_timeout` is 60 s: a cold start may pull models first.

    Args:
        env: its environment (see :func:`proxy_env`).
        log_path: where its output goes.
        command: the CLI command and its arguments (``serve`` by default).
        python_args: between the interpreter and ``-m proxy`` (e.g. a profiler).
    """

    ready_timeout = 60.0

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        log_path: Path | None = None,
        command: Sequence[str] = ("serve",),
        python_args: Sequence[str] = (),
    ) -> None:
        port = int(env.get("PROXY_PORT", "11434"))
        super().__init__(
            [sys.executable, *python_args, "-m", "proxy", *command],
            env=env,
            url=f"http://127.0.0.1:{port}",
            log_path=log_path,
            ready_path="/readyz",
            listening=_proxy_listening(port, env.get("LOG_LEVEL", "info")),
        )

    @property
    def port(self) -> int:
        return int(self.env.get("PROXY_PORT", "11434"))

    @property
    def ollama_port(self) -> int:
        """The port of the supervised Ollama (or simulator)."""
        return int(self.env.get("OLLAMA_INTERNAL_HOST", "127.0.0.1:11435").rsplit(":", 1)[1])

    @property
    def ollama_url(self) -> str:
        """Where the supervised Ollama (or simulator) listens."""
        return f"http://127.0.0.1:{self.ollama_port}"

    @property
    def models_dir(self) -> Path:
        return Path(self.env["OLLAMA_MODELS"])

    @property
    def state_dir(self) -> Path:
        """The simulator's ``SIM_STATE_DIR`` (its pull log)."""
        return Path(self.env["SIM_STATE_DIR"])

    @property
    def headers(self) -> dict[str, str]:
        """The API-key header (empty without ``PROXY_API_KEY``)."""
        key = self.env.get("PROXY_API_KEY")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def get(self, path: str, timeout: float = HTTP_TIMEOUT) -> tuple[int, Any]:
        """``GET`` a path with the API key (``/readyz`` details only go to key holders)."""
        return http_json(self.url + path, headers=self.headers, timeout=timeout)

    def pulls(self) -> list[dict[str, Any]]:
        """The simulator's record of every pull so far (its ``SIM_STATE_DIR``)."""
        return read_pull_log(self.state_dir)

    def ollama(self) -> Any:
        """The live ``psutil.Process`` of the supervised Ollama child, or None."""
        import psutil  # type: ignore[import-untyped]  # a dev dependency: only tests ask

        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children():
                if child.status() != psutil.STATUS_ZOMBIE and child.pid != self.pid:
                    return child
        return None

    def wait_ollama(self, timeout: float | None = None) -> Any:
        """Block until the Ollama child runs; its ``psutil.Process``."""
        limit = self.ready_timeout if timeout is None else timeout
        return self._waiting(self.ollama, limit, "the Ollama child")

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """Stop the proxy (it stops Ollama), then kill any Ollama child left behind."""
        child = self.ollama() if self.popen is not None and self.popen.poll() is None else None
        code = super().stop(grace)
        if child is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
        return code


class SimulatorProcess(ServiceProcess):
    """One ``ollama-sim serve`` on a free loopback port, ready when ``GET /`` answers::

        async with SimulatorProcess({"SIM_TOKEN_DELAY": "0.01"}) as sim:
            client = ollama.AsyncClient(host=sim.url)

    Args:
        env: extra environment (``SIM_*``, ``OLLAMA_*``) over this process's environment.
        models_dir: ``OLLAMA_MODELS``; default a fresh temporary directory. Pass the same one to
            a second simulator to start with the models already present.
        wait_ready: whether :meth:`start` waits until it answers (else it only spawns).
        log_path: where its output goes; default a temporary file.
    """

    ready_timeout = 15.0

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        models_dir: Path | None = None,
        wait_ready: bool = True,
        log_path: Path | None = None,
    ) -> None:
        self._work = tempfile.TemporaryDirectory(prefix="ollama-sim-")
        inherited = (env or {}).get("OLLAMA_MODELS")
        self.models_dir = models_dir or Path(inherited or Path(self._work.name) / "models")
        self.port = free_port()
        self._wait = wait_ready
        super().__init__(
            [*simulator_command(), "serve"],
            env={
                **os.environ,
                **(env or {}),
                "OLLAMA_MODELS": str(self.models_dir),
                "OLLAMA_HOST": f"127.0.0.1:{self.port}",
            },
            url=f"http://127.0.0.1:{self.port}",
            log_path=log_path or Path(self._work.name) / "ollama-sim.log",
            listening=re.compile(rf"Listening on 127\.0\.0\.1:{self.port} "),
        )

    def start(self) -> Self:
        return super().start() if self._wait else self.spawn()

    def logs(self) -> str:
        """Everything it wrote so far."""
        return self.log_text()

    async def arestart(self) -> Self:
        """Stop, then start again on the same port with the same models and environment."""
        await self.astop()
        return await self.astart()

    async def await_exit(self) -> int:
        """Wait until it exits; its status (bound the wait with ``asyncio.timeout``)."""
        return await asyncio.to_thread(self._proc().wait)
