"""Run the proxy (``python -m proxy serve``) as a child of UbiOps request process 0.

UbiOps calls the deployment from plain threads, so the launcher keeps a daemon thread of its own
with an asyncio loop that owns the child (a :class:`~proxy.children.ChildProcess`): it spawns
it, waits for it, and restarts it with a capped backoff when it dies, logging why. It is also
the only thread that forks, which matters because the child's parent-death signal fires when the
*thread* that forked it ends: the child never outlives the watcher, and the watcher lives until
:meth:`ProxyLauncher.stop` or the end of the process.

:meth:`ProxyLauncher.stop` sends the child SIGTERM (the proxy drains and stops Ollama), waits up
to a grace period, then SIGKILLs its whole process group so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from proxy.children import Backoff, ChildProcess, describe_returncode
from proxy.config import Settings
from proxy.logs import get_logger

__all__ = ["EXIT_CONFIG_ERROR", "LauncherError", "ProxyLauncher"]

EXIT_CONFIG_ERROR = 2
"""The proxy's exit status for an unusable configuration: restarting cannot help."""

RESTART_BACKOFF = Backoff(initial=0.5, maximum=30.0)
"""Delays between crashes of the proxy (reset after it stayed up a minute)."""

_STOP_MARGIN = 5.0
"""Beyond the proxy's own SHUTDOWN_GRACE, how long it may take to stop (seconds)."""

log = get_logger(__name__)


class LauncherError(RuntimeError):
    """The proxy cannot be run: it could not be spawned, or it exited with a fatal status."""


class ProxyLauncher:
    """Start, watch and stop the proxy child of one request process.

    Args:
        settings: the instance settings (the stop grace is ``shutdown_grace`` plus a margin).
        command: what to run; default ``[sys.executable, "-m", "proxy", "serve"]``.
        env: the child's environment; default this process's environment.
        backoff: restart delays.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        backoff: Backoff = RESTART_BACKOFF,
    ) -> None:
        self._command = list(command or [sys.executable, "-m", "proxy", "serve"])
        self._env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
        self._grace = settings.shutdown_grace + _STOP_MARGIN
        self._backoff = dataclasses.replace(backoff)
        self._loop = asyncio.new_event_loop()
        self._stopping = asyncio.Event()
        self._spawned = threading.Event()
        self._child: ChildProcess | None = None
        self._thread: threading.Thread | None = None
        self._failure: str | None = None
        self._starts = 0

    @property
    def pid(self) -> int | None:
        """The running child's pid, or None between a crash and its restart."""
        child = self._child
        return child.pid if child is not None and child.returncode is None else None

    @property
    def restarts(self) -> int:
        """How many times the child was started again after it died."""
        return max(self._starts - 1, 0)

    @property
    def failure(self) -> str | None:
        """Why the launcher gave up on the proxy, or None while it keeps it running."""
        return self._failure

    def start(self) -> None:
        """Start the watcher thread; return once the first child is spawned.

        Raises:
            LauncherError: the child could not be spawned at all.
            RuntimeError: already started.
        """
        if self._thread is not None:
            raise RuntimeError("the proxy launcher was already started")
        self._thread = threading.Thread(
            target=self._loop.run_until_complete,
            args=(self._watch(),),
            name="proxy-launcher",
            daemon=True,
        )
        self._thread.start()
        self._spawned.wait()
        self.check()

    def check(self) -> None:
        """Raise :class:`LauncherError` if the launcher gave up on the proxy."""
        if self._failure is not None:
            raise LauncherError(self._failure)

    def stop(self) -> None:
        """Stop the child and the watcher: SIGTERM, up to the grace, SIGKILL to its group.

        Blocks until the child is gone. Safe to call more than once and before :meth:`start`.
        """
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        if thread is not threading.current_thread():
            thread.join()
            self._loop.close()

    async def _watch(self) -> None:
        try:
            while not self._stopping.is_set():
                child = self._child = ChildProcess(
                    self._command, env=self._env, name="proxy", death_signal=signal.SIGTERM
                )
                try:
                    await child.start()
                except OSError as exc:
                    self._failure = f"cannot start the proxy ({' '.join(self._command)}): {exc}"
                    log.error("proxy start failed", error=self._failure)
                    return
                finally:
                    self._spawned.set()
                self._starts += 1
                started = time.monotonic()
                returncode = await self._wait_or_stop(child)
                if returncode is None:
                    return
                await child.stop(0)  # whatever is left in its process group
                if returncode == EXIT_CONFIG_ERROR:
                    self._failure = (
                        f"the proxy {describe_returncode(returncode)} (a configuration error; see "
                        "its log above); fix the environment variables and restart the deployment"
                    )
                    log.error("proxy failed; not restarting", pid=child.pid, reason=self._failure)
                    return
                ran = time.monotonic() - started
                delay = self._backoff.next_delay(ran)
                log.warning(
                    "proxy died; restarting",
                    pid=child.pid,
                    how=describe_returncode(returncode),
                    ran_s=round(ran, 1),
                    restart_in_s=delay,
                    restarts=self._starts,
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
                        return
        finally:
            self._spawned.set()

    async def _wait_or_stop(self, child: ChildProcess) -> int | None:
        """The child's exit status, or None once a stop was asked for and carried out."""
        exited = asyncio.ensure_future(child.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if self._stopping.is_set():
            exited.cancel()
            await child.stop(self._grace)
            return None
        return exited.result()
