"""Child processes, the one way this project runs them: its own process group, tied to the
parent's life, stopped TERM → grace → KILL, reaped, and restarted with a capped backoff.

Two supervisors use it: the launcher (UbiOps request process 0 → ``python -m proxy serve``) and
the Ollama supervisor (proxy → ``ollama serve``). A :class:`ChildProcess` is one child, started
once; its state moves ``new → running → (stopping →) exited`` and nothing else: any other
transition is a bug and raises :class:`InvalidTransition`.

Why a ``SubprocessProtocol`` and not ``asyncio.create_subprocess_exec``: on Python 3.11,
``asyncio.subprocess.Process.wait()`` returns only once the child has exited *and* every pipe
is closed. Grandchildren (Ollama's model runners) inherit the pipes, so a surviving grandchild
would hide the exit. :meth:`ChildProcess.wait` resolves on the exit itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import enum
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from proxy.logs import get_logger

__all__ = [
    "Backoff",
    "ChildProcess",
    "ChildState",
    "InvalidTransition",
    "LineSink",
    "describe_returncode",
]

STDERR_TAIL_LINES = 20
"""How many of the last stderr lines are kept for error reports."""

MAX_LINE_BYTES = 16 * 1024
"""A longer output line is passed on in pieces of this size rather than buffered without bound."""

PIPE_DRAIN_TIMEOUT = 0.5
"""After an exit, how long to wait for the output pipes to reach end-of-file (seconds)."""

KILL_WAIT_TIMEOUT = 5.0
"""After SIGKILL, how long to wait for the exit to be reported before giving up (seconds)."""

_PR_SET_PDEATHSIG = 1
_STDOUT, _STDERR = 1, 2
_STREAM_NAMES = {_STDOUT: "stdout", _STDERR: "stderr"}

LineSink = Callable[[str, str], None]
"""Receives each output line of a child as ``(stream, line)``, ``stream`` being stdout/stderr."""

log = get_logger(__name__)


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


@dataclass(slots=True)
class Backoff:
    """Restart delays that double from ``initial`` up to ``maximum`` (seconds).

    A child that stayed up ``stable_after`` seconds or more starts the count afresh.
    """

    initial: float
    maximum: float
    stable_after: float = 60.0
    failures: int = field(default=0, init=False)

    def next_delay(self, uptime: float = 0.0) -> float:
        """Count one more failure of a child that ran ``uptime`` seconds; the delay to wait."""
        self.failures = 1 if uptime >= self.stable_after else self.failures + 1
        return float(min(self.initial * 2.0 ** (self.failures - 1), self.maximum))

    def reset(self) -> None:
        """Forget past failures (the child came up)."""
        self.failures = 0


class ChildState(enum.StrEnum):
    """Where a :class:`ChildProcess` is in its one life."""

    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"


_TRANSITIONS: Mapping[ChildState, frozenset[ChildState]] = {
    ChildState.NEW: frozenset({ChildState.RUNNING}),
    ChildState.RUNNING: frozenset({ChildState.STOPPING, ChildState.EXITED}),
    ChildState.STOPPING: frozenset({ChildState.EXITED}),
    ChildState.EXITED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A child was asked to move to a state it cannot reach from where it is (a bug)."""


class ChildProcess:
    """One child process in a process group of its own; use from the loop that started it.

    Args:
        argv: the command.
        env: its whole environment.
        name: what log events call it.
        death_signal: what the kernel sends the child when the thread that started it ends
            (Linux ``PR_SET_PDEATHSIG``), so that not even a SIGKILL of the parent leaves an
            orphan. Start it from a thread that lives as long as the child should.
        output: where its output lines go; ``None`` lets the child inherit this process's
            stdout and stderr (no stderr tail is kept then).

    Blocking contracts: :meth:`start` returns once the child is spawned; :meth:`wait` when it
    has exited; :meth:`stop` once it is reaped and its group signalled. None raises for a
    child that already exited.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        name: str,
        death_signal: signal.Signals = signal.SIGKILL,
        output: LineSink | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.name = name
        self._env = dict(env)
        self._death_signal = death_signal
        self._output = output
        self._state = ChildState.NEW
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._protocol: _ChildProtocol | None = None
        self._transport: asyncio.SubprocessTransport | None = None
        self._pid: int | None = None
        self._stop_task: asyncio.Task[int | None] | None = None

    @property
    def state(self) -> ChildState:
        return self._state

    @property
    def pid(self) -> int | None:
        """The child's pid (also its process group id), once started."""
        return self._pid

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal), or None while it runs."""
        return None if self._protocol is None else self._protocol.returncode

    @property
    def stderr_tail(self) -> tuple[str, ...]:
        """The last lines the child wrote to stderr (only when ``output`` is set)."""
        return tuple(self._stderr_tail)

    def describe_exit(self) -> str:
        """How the child ended, for messages; ``is running`` while it runs."""
        code = self.returncode
        return "is running" if code is None else describe_returncode(code)

    async def start(self) -> None:
        """Spawn the child.

        Raises:
            InvalidTransition: this child was already started.
            OSError: the command could not be run.
        """
        self._check(ChildState.RUNNING)
        loop = asyncio.get_running_loop()
        protocol = _ChildProtocol(loop, self._on_line if self._output else None, self._exited)
        piped = asyncio.subprocess.PIPE if self._output else None
        transport, _ = await loop.subprocess_exec(
            lambda: protocol,
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=piped,
            stderr=piped,
            env=self._env,
            start_new_session=True,
            preexec_fn=_parent_death_signal(self._death_signal),
        )
        self._protocol, self._transport = protocol, transport
        self._pid = transport.get_pid()
        self._set_state(ChildState.RUNNING)
        if protocol.returncode is not None:  # exited before we got here
            self._exited()
        log.info(f"{self.name} started", pid=self._pid, command=" ".join(self.argv))

    async def wait(self) -> int:
        """Wait for the child to exit and return its status (pipes may still be open)."""
        if self._protocol is None:
            raise InvalidTransition(f"{self.name} was never started")
        return await asyncio.shield(self._protocol.exited)

    async def drain(self, limit: float = PIPE_DRAIN_TIMEOUT) -> None:
        """Wait up to ``limit`` seconds for its output to reach end-of-file.

        After an exit this completes the stderr tail; a grandchild that inherited the pipes may
        keep them open, hence the bound.
        """
        if self._protocol is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._protocol.pipes_closed), limit)

    async def stop(self, grace: float) -> int | None:
        """SIGTERM to the group, up to ``grace`` seconds, SIGKILL to the group, reap.

        Idempotent and safe to cancel: the stop runs in its own task and every caller waits
        for the same one. The group is killed even when the leader already exited, which also
        ends grandchildren it left behind. Returns the exit status, or None if never started.
        """
        if self._protocol is None:
            return None
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(grace), name=f"{self.name}-stop")
        return await asyncio.shield(self._stop_task)

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the child's process group; a gone group is not an error.

        Synchronous, so that a forced exit can call it from a signal callback.
        """
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pid, signum)

    async def _stop(self, grace: float) -> int | None:
        protocol, transport = self._protocol, self._transport
        assert protocol is not None
        assert transport is not None
        if self._state is ChildState.RUNNING:
            self._set_state(ChildState.STOPPING)
            log.info(f"stopping {self.name}", pid=self._pid, grace_s=grace)
            self.signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(protocol.exited), grace)
            except TimeoutError:
                log.warning(f"{self.name} did not stop in time; killing it", pid=self._pid)
        self.signal_group(signal.SIGKILL)
        try:
            await asyncio.wait_for(asyncio.shield(protocol.exited), KILL_WAIT_TIMEOUT)
        except TimeoutError:
            log.error(f"{self.name} did not exit after SIGKILL", pid=self._pid)
        await self.drain()
        transport.close()
        log.info(f"{self.name} stopped", pid=self._pid, how=self.describe_exit())
        return protocol.returncode

    def _exited(self) -> None:
        if self._state in (ChildState.RUNNING, ChildState.STOPPING):
            self._set_state(ChildState.EXITED)

    def _on_line(self, fd: int, line: str) -> None:
        if fd == _STDERR:
            self._stderr_tail.append(line)
        assert self._output is not None
        self._output(_STREAM_NAMES[fd], line)

    def _check(self, new: ChildState) -> None:
        if new not in _TRANSITIONS[self._state]:
            raise InvalidTransition(f"{self.name} cannot go from {self._state} to {new}")

    def _set_state(self, new: ChildState) -> None:
        self._check(new)
        log.debug(f"{self.name} state", old=str(self._state), new=str(new), pid=self._pid)
        self._state = new


class _ChildProtocol(asyncio.SubprocessProtocol):
    """Splits output into lines and resolves futures on exit and on end-of-output."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_line: Callable[[int, str], None] | None,
        on_exit: Callable[[], None],
    ) -> None:
        self._on_line = on_line
        self._on_exit = on_exit
        self._buffers = {_STDOUT: bytearray(), _STDERR: bytearray()}
        self._open = {_STDOUT, _STDERR} if on_line else set()
        self._transport: asyncio.SubprocessTransport | None = None
        self.returncode: int | None = None
        self.exited: asyncio.Future[int] = loop.create_future()
        self.pipes_closed: asyncio.Future[None] = loop.create_future()
        if not self._open:
            self.pipes_closed.set_result(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transport implements SubprocessTransport without subclassing it.
        self._transport = cast(asyncio.SubprocessTransport, transport)

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        buffer = self._buffers[fd]
        buffer += data.encode() if isinstance(data, str) else data
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) < MAX_LINE_BYTES:
                    return
                end = MAX_LINE_BYTES
                self._emit(fd, bytes(buffer[:end]))
                del buffer[:end]
                continue
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
        self._on_exit()

    def _emit(self, fd: int, raw: bytes) -> None:
        raw = raw.rstrip(b"\r")
        if raw.strip() and self._on_line is not None:
            self._on_line(fd, raw.decode("utf-8", errors="replace"))


def _parent_death_signal(signum: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel send ``signum`` to the child when its parent
    thread ends (Linux ``prctl(PR_SET_PDEATHSIG)``); None elsewhere.

    The libc function is resolved here, in the parent, so the child makes one foreign call
    between fork and exec. A parent that died before the ``prctl`` took effect is caught by
    comparing the parent pid.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - no usable libc
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    parent = os.getpid()
    number = int(signum)

    def set_parent_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, number, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), number)

    return set_parent_death_signal
