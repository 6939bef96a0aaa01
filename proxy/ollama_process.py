"""The ``ollama serve`` child process: spawn, relay its output, notice its exit, stop it.

One :class:`OllamaProcess` is one child, started once. It runs in its own session (and so its
own process group, which also holds the model runners Ollama starts), with a parent-death
signal so that even a SIGKILL of the proxy leaves no orphan. Its stdout and stderr are read as
fast as they arrive and relayed line by line as structured events with ``source="ollama"``;
the last stderr lines are kept for error reports.

Why a protocol and not ``asyncio.create_subprocess_exec``: on Python 3.11,
``asyncio.subprocess.Process.wait()`` returns only once the child has exited *and* every pipe
is closed. The runners Ollama spawns inherit its stderr, so after a crash of ``ollama serve``
a surviving runner would hide the crash. :meth:`OllamaProcess.wait` resolves on the exit
itself (``SubprocessProtocol.process_exited``), independently of the pipes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import re
import shutil
import signal
import sys
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from proxy.config import ConfigError, Settings
from proxy.logs import get_logger

__all__ = [
    "STDERR_TAIL_LINES",
    "WITHHELD_VARIABLES",
    "OllamaProcess",
    "build_child_env",
    "describe_returncode",
    "resolve_executable",
]

STDERR_TAIL_LINES = 20
"""How many of the last stderr lines are kept for error reports."""

MAX_LINE_BYTES = 16 * 1024
"""A longer line is relayed in pieces of this size rather than buffered without bound."""

PIPE_DRAIN_TIMEOUT = 0.5
"""After an exit, how long to wait for the output pipes to reach end-of-file (seconds)."""

KILL_WAIT_TIMEOUT = 5.0
"""After SIGKILL, how long to wait for the exit to be reported before giving up (seconds)."""

WITHHELD_VARIABLES = ("PROXY_API_KEY", "PROXY_ADMIN_KEY", "UBIOPS_API_TOKEN")
"""Secrets of the proxy and the deployment tooling that ``ollama serve`` never gets."""

_PR_SET_PDEATHSIG = 1
_STDOUT, _STDERR = 1, 2
_STREAM_NAMES = {_STDOUT: "stdout", _STDERR: "stderr"}
_GO_LEVEL = re.compile(rb"\blevel=(DEBUG|INFO|WARN|WARNING|ERROR)\b")
_GO_LEVELS = {
    b"DEBUG": logging.DEBUG,
    b"INFO": logging.INFO,
    b"WARN": logging.WARNING,
    b"WARNING": logging.WARNING,
    b"ERROR": logging.ERROR,
}

# Lazy: resolved at first use, so it follows configure_logging() and capture_logs().
log = get_logger(__name__)


def resolve_executable(name: str) -> str:
    """The absolute path of the Ollama executable named by ``OLLAMA_BIN``.

    A bare name is looked up on ``PATH``; a name with a slash must be an executable file.

    Raises:
        ConfigError: no such executable.
    """
    if os.sep in name:
        path = Path(name)
        if path.is_file() and os.access(path, os.X_OK):
            return str(path.absolute())
        raise ConfigError("OLLAMA_BIN", f"{name!r} is not an executable file")
    found = shutil.which(name)
    if found is None:
        raise ConfigError("OLLAMA_BIN", f"{name!r} was not found on PATH")
    return found


def build_child_env(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of ``ollama serve``: ours, plus where to listen and keep-alive forever.

    ``OLLAMA_HOST`` is always the internal loopback address; ``OLLAMA_KEEP_ALIVE`` defaults
    to ``-1`` (loaded models stay loaded) unless the operator set it. The secrets Ollama has no
    use for (:data:`WITHHELD_VARIABLES`) are left out; every other variable, ``OLLAMA_*``
    included, passes through unchanged.
    """
    env = dict(os.environ if environ is None else environ)
    for name in WITHHELD_VARIABLES:
        env.pop(name, None)
    host = settings.ollama_internal_host
    host = f"[{host}]" if ":" in host else host
    env["OLLAMA_HOST"] = f"{host}:{settings.ollama_internal_port}"
    if not env.get("OLLAMA_KEEP_ALIVE", "").strip():
        env["OLLAMA_KEEP_ALIVE"] = "-1"
    return env


def describe_returncode(returncode: int) -> str:
    """``exited with status 3`` or ``was killed by signal SIGKILL (perhaps out of memory?)``."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = str(-returncode)
    hint = " (perhaps out of memory?)" if -returncode == signal.SIGKILL else ""
    return f"was killed by signal {name}{hint}"


class OllamaProcess:
    """One ``ollama serve`` child. Use from the event loop thread that started it.

    Blocking contracts: :meth:`start` returns once the child is spawned (not ready);
    :meth:`wait` returns when the child has exited; :meth:`stop` returns once the child is
    reaped and its process group signalled. None of them raise for a child that already exited.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        executable: str | None = None,
        environ: Mapping[str, str] | None = None,
        stderr_lines: int = STDERR_TAIL_LINES,
    ) -> None:
        self._settings = settings
        self._executable = executable
        self._environ = environ
        self._stderr_tail: deque[str] = deque(maxlen=stderr_lines)
        self._transport: asyncio.SubprocessTransport | None = None
        self._protocol: _ChildProtocol | None = None
        self._pid: int | None = None
        self._stop_task: asyncio.Task[int | None] | None = None

    @property
    def pid(self) -> int | None:
        """The child's pid (also its process group id), once started."""
        return self._pid

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal), or None while it runs."""
        if self._protocol is None:
            return None
        return self._protocol.returncode

    @property
    def running(self) -> bool:
        return self._protocol is not None and self._protocol.returncode is None

    @property
    def stderr_tail(self) -> tuple[str, ...]:
        """The last lines the child wrote to stderr (at most ``STDERR_TAIL_LINES``)."""
        return tuple(self._stderr_tail)

    def describe_exit(self) -> str:
        """How the child ended, for error messages; ``is running`` while it runs."""
        code = self.returncode
        return "is running" if code is None else describe_returncode(code)

    async def start(self) -> None:
        """Spawn ``<OLLAMA_BIN> serve``.

        Raises:
            RuntimeError: this object was already started.
            ConfigError: the executable does not exist.
            OSError: the executable could not be run.
        """
        if self._protocol is not None:
            raise RuntimeError("this OllamaProcess was already started")
        executable = self._executable or resolve_executable(self._settings.ollama_bin)
        loop = asyncio.get_running_loop()
        self._protocol = protocol = _ChildProtocol(loop, self._stderr_tail)
        transport, _ = await loop.subprocess_exec(
            lambda: protocol,
            executable,
            "serve",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=build_child_env(self._settings, self._environ),
            start_new_session=True,
            preexec_fn=_parent_death_signal(),
        )
        self._transport = transport
        self._pid = transport.get_pid()
        protocol.bind(self._pid)
        log.info("ollama started", pid=self._pid, executable=executable)

    async def wait(self) -> int:
        """Wait for the child to exit and return its status (pipes may still be open)."""
        if self._protocol is None:
            raise RuntimeError("this OllamaProcess was never started")
        return await asyncio.shield(self._protocol.exited)

    async def drain(self, limit: float = PIPE_DRAIN_TIMEOUT) -> None:
        """Wait up to ``limit`` seconds for stdout and stderr to reach end-of-file.

        After an exit this makes the stderr tail complete; a runner that inherited the pipes
        may keep them open, hence the bound.
        """
        if self._protocol is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._protocol.pipes_closed), limit)

    async def stop(self, grace: float) -> int | None:
        """Stop the child: SIGTERM to its group, ``grace`` seconds, SIGKILL to the group, reap.

        Idempotent, and safe to cancel: the stop goes on in its own task and every caller
        waits for the same one. Returns the exit status, or None if the child never started.
        """
        if self._protocol is None or self._transport is None:
            return None
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(grace), name="ollama-stop")
        return await asyncio.shield(self._stop_task)

    async def _stop(self, grace: float) -> int | None:
        protocol, transport = self._protocol, self._transport
        assert protocol is not None
        assert transport is not None
        if protocol.returncode is None:
            log.info("stopping ollama", pid=self._pid, grace=grace)
            self.signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(protocol.exited), grace)
            except TimeoutError:
                log.warning("ollama did not stop in time; killing it", pid=self._pid)
        # Also reaches runners left behind by a leader that already died.
        self.signal_group(signal.SIGKILL)
        try:
            await asyncio.wait_for(asyncio.shield(protocol.exited), KILL_WAIT_TIMEOUT)
        except TimeoutError:
            log.error("ollama did not exit after SIGKILL", pid=self._pid)
        await self.drain()
        transport.close()
        log.info("ollama stopped", pid=self._pid, how=self.describe_exit())
        return protocol.returncode

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the child's process group; a gone group is not an error.

        Synchronous, so that a forced exit can call it from a signal callback.
        """
        if self._pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pid, signum)


class _ChildProtocol(asyncio.SubprocessProtocol):
    """Relays output line by line and resolves futures on exit and on end-of-output."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stderr_tail: deque[str]) -> None:
        self._loop = loop
        self._stderr_tail = stderr_tail
        self._buffers: dict[int, bytearray] = {_STDOUT: bytearray(), _STDERR: bytearray()}
        self._open = {_STDOUT, _STDERR}
        self._transport: asyncio.SubprocessTransport | None = None
        self._log: Any = get_logger("ollama").bind(source="ollama")
        self.returncode: int | None = None
        self.exited: asyncio.Future[int] = loop.create_future()
        self.pipes_closed: asyncio.Future[None] = loop.create_future()

    def bind(self, pid: int) -> None:
        self._log = self._log.bind(pid=pid)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transport implements SubprocessTransport without subclassing it.
        self._transport = cast(asyncio.SubprocessTransport, transport)

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        if isinstance(data, str):  # pragma: no cover - only with text=True
            data = data.encode()
        buffer = self._buffers[fd]
        buffer += data
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) >= MAX_LINE_BYTES:
                    self._emit(fd, bytes(buffer[:MAX_LINE_BYTES]))
                    del buffer[:MAX_LINE_BYTES]
                    continue
                return
            self._emit(fd, bytes(buffer[:end]))
            del buffer[: end + 1]

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        buffer = self._buffers.get(fd)
        if buffer:
            self._emit(fd, bytes(buffer))
            buffer.clear()
        self._open.discard(fd)
        if not self._open and not self.pipes_closed.done():
            self.pipes_closed.set_result(None)

    def process_exited(self) -> None:
        assert self._transport is not None
        code = self._transport.get_returncode()
        self.returncode = code if code is not None else -1
        if not self.exited.done():
            self.exited.set_result(self.returncode)

    def _emit(self, fd: int, raw: bytes) -> None:
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            return
        line = raw.decode("utf-8", errors="replace")
        if fd == _STDERR:
            self._stderr_tail.append(line)
        match = _GO_LEVEL.search(raw)
        level = _GO_LEVELS[match.group(1)] if match else logging.INFO
        if raw.startswith((b"panic:", b"fatal error:")):
            level = logging.ERROR
        self._log.log(level, line, stream=_STREAM_NAMES[fd])


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel SIGKILL the child when this process dies.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere None. The function is resolved here,
    in the parent, so the child only makes one foreign call between fork and exec. The death
    signal fires when the *thread* that forked the child ends: spawn from the event loop
    thread, which lives as long as the proxy. A parent that died before the ``prctl`` took
    effect is caught by comparing the parent pid.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):  # pragma: no cover - no usable libc
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)

    def set_parent_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), sigkill)

    return set_parent_death_signal
