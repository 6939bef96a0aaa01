"""Run ``ollama-sim serve`` as a real subprocess, for tests of anything that talks to Ollama."""

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from ..net import free_port

__all__ = ["SimulatorExited", "SimulatorProcess", "default_command"]

_POLL = 0.02


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
        port: default :func:`~proxy.testing.net.free_port`. Kept across :meth:`restart`.
        command: argv before ``serve``; default :func:`default_command`.
        ready_timeout: seconds to wait for readiness before failing.
        wait_ready: whether :meth:`start` waits until the server answers.

    Attributes ``url`` (``http://127.0.0.1:<port>``), ``host`` (the ``OLLAMA_HOST`` value),
    ``port``, ``pid``, ``returncode`` and ``models_dir`` describe the process; :meth:`logs`
    returns its stderr/stdout so far (kept in a file, so the pipe never fills up).
    Stopping sends SIGTERM, then SIGKILL after ``stop_timeout``.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        models_dir: Path | None = None,
        port: int | None = None,
        command: Sequence[str] | None = None,
        ready_timeout: float = 15.0,
        wait_ready: bool = True,
        stop_timeout: float = 5.0,
    ) -> None:
        self._workdir = tempfile.TemporaryDirectory(prefix="ollama-sim-")
        work = Path(self._workdir.name)
        inherited = (env or {}).get("OLLAMA_MODELS")
        self.models_dir = models_dir or (Path(inherited) if inherited else work / "models")
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.log_path = work / "ollama-sim.log"
        self._env = {
            **os.environ,
            **(env or {}),
            "OLLAMA_MODELS": str(self.models_dir),
            "OLLAMA_HOST": self.host,
        }
        self._command = [*(command or default_command()), "serve"]
        self._ready_timeout = ready_timeout
        self._wait_ready = wait_ready
        self._stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        """The running process id."""
        return self._process().pid

    @property
    def returncode(self) -> int | None:
        """Exit status once the process ended, else ``None``."""
        return None if self._proc is None else self._proc.poll()

    def logs(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def send_signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the process (ignored if it already exited)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._process().pid, signum)

    def spawn(self) -> None:
        """Start the process without waiting for readiness."""
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("ollama-sim is already running")
        self._close_log()
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self._command,
            env=self._env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    # Synchronous API -------------------------------------------------------------------

    def start(self) -> Self:
        """Spawn, then (if ``wait_ready``) block until ``GET /`` answers 200."""
        self.spawn()
        if self._wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Block until ready.

        Raises:
            SimulatorExited: the process ended first.
            TimeoutError: not ready within ``ready_timeout``.
        """
        deadline = time.monotonic() + self._ready_timeout
        while not self._probe():
            self._check_deadline(deadline)
            time.sleep(_POLL)

    def wait(self, timeout: float | None = None) -> int:
        """Block until the process exits; returns its status."""
        return self._process().wait(timeout)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``stop_timeout``; returns the exit status."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self.send_signal(signal.SIGTERM)
            try:
                proc.wait(self._stop_timeout)
            except subprocess.TimeoutExpired:
                self.send_signal(signal.SIGKILL)
                proc.wait()
        self._close_log()
        return proc.returncode

    def restart(self) -> Self:
        """Stop, then start again on the same port with the same models and environment."""
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # Asynchronous API ------------------------------------------------------------------

    async def astart(self) -> Self:
        """Async :meth:`start`."""
        self.spawn()
        if self._wait_ready:
            await self.await_ready()
        return self

    async def await_ready(self) -> None:
        """Async :meth:`wait_ready`."""
        deadline = time.monotonic() + self._ready_timeout
        while not await asyncio.to_thread(self._probe):
            self._check_deadline(deadline)
            await asyncio.sleep(_POLL)

    async def await_exit(self) -> int:
        """Async :meth:`wait` (bound it with ``asyncio.timeout``)."""
        proc = self._process()
        while True:
            code = proc.poll()
            if code is not None:
                return code
            await asyncio.sleep(_POLL)

    async def astop(self) -> int | None:
        """Async :meth:`stop`."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(self._stop_timeout):
                    await self.await_exit()
            except TimeoutError:
                self.send_signal(signal.SIGKILL)
                await self.await_exit()
        self._close_log()
        return proc.returncode

    async def arestart(self) -> Self:
        """Async :meth:`restart`."""
        await self.astop()
        return await self.astart()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

    # Internals -------------------------------------------------------------------------

    def _process(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError("ollama-sim has not been started")
        return self._proc

    def _probe(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1.0)
        try:
            conn.request("GET", "/")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def _check_deadline(self, deadline: float) -> None:
        code = self._process().poll()
        if code is not None:
            raise SimulatorExited(code, self.logs())
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"ollama-sim not ready within {self._ready_timeout}s:\n{self.logs()}"
            )

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
