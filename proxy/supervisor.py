"""Supervise ``ollama serve``: spawn → readiness → pulls → warm-up → watch → restart.

:class:`Supervisor` is the one owner of the Ollama status in :class:`~proxy.state.InstanceState`
and of the child process (a :class:`~proxy.children.ChildProcess`). Its policy:

* The child exits (or never answers) before it is ready: report the exit status and the last
  stderr lines, try again with backoff, up to ``OLLAMA_START_ATTEMPTS`` starts in a row. Then
  halt: Ollama is marked ``failed`` with the reason and :attr:`Supervisor.fatal` holds an
  :class:`OllamaFatalError`. A child that cannot start is not respawned forever (gunicorn's
  ``HaltServer`` lesson).
* The child dies after it was ready: Ollama is ``restarting`` (``/readyz`` answers 503), the
  child is restarted with capped backoff, the models are re-checked with ``/api/tags`` (present
  ones are not pulled again), re-warmed, and the instance is ready again.
* :meth:`Supervisor.stop`: SIGTERM to the child's group, a grace period, SIGKILL, reap.

Use it as an async context manager, or put :meth:`Supervisor.cleanup_ctx` in an aiohttp
application's ``cleanup_ctx``: the work starts in a background task on enter (startup is not
delayed by Ollama) and the child is stopped on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web
from tenacity.wait import wait_base

from proxy.children import Backoff, ChildProcess
from proxy.config import Settings
from proxy.logs import get_logger
from proxy.ollama import (
    OllamaStartError,
    ensure_port_free,
    ollama_child,
    resolve_executable,
    wait_until_ready,
)
from proxy.preparer import ModelPreparer, PullObserver
from proxy.state import InstanceState, ModelStatus, OllamaStatus

__all__ = ["CHILD_STOP_GRACE", "OllamaFatalError", "Supervisor"]

CHILD_STOP_GRACE = 5.0
"""After SIGTERM, how long ``ollama serve`` may take to exit before SIGKILL (seconds)."""

START_BACKOFF = Backoff(initial=0.5, maximum=10.0)
"""Delays between failed starts in a row."""

RESTART_BACKOFF = Backoff(initial=0.25, maximum=30.0)
"""Delays between crashes of a child that was up (reset after it stayed up a minute)."""

log = get_logger(__name__)


class OllamaFatalError(Exception):
    """``ollama serve`` could not be started; the supervisor halted instead of respawning."""

    def __init__(self, reason: str, attempts: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


class Supervisor:
    """Runs ``ollama serve`` and makes the configured models servable; see the module doc.

    Not thread-safe: use from one event loop. ``start_backoff``/``restart_backoff``,
    ``pull_wait`` and ``pull_sleep`` exist so that tests can run fast.
    """

    def __init__(
        self,
        settings: Settings,
        state: InstanceState,
        *,
        executable: str | None = None,
        warm: bool | None = None,
        start_backoff: Backoff = START_BACKOFF,
        restart_backoff: Backoff = RESTART_BACKOFF,
        stop_grace: float = CHILD_STOP_GRACE,
        pull_wait: wait_base | None = None,
        pull_sleep: Callable[[float], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_pull: PullObserver | None = None,
    ) -> None:
        self._settings = settings
        self._state = state
        self._on_pull = on_pull
        self._executable = executable
        self._warm = settings.preload_models if warm is None else warm
        # Copies: a backoff counts failures, and each supervisor counts its own.
        self._start_backoff = dataclasses.replace(start_backoff)
        self._restart_backoff = dataclasses.replace(restart_backoff)
        self._stop_grace = stop_grace
        self._pull_wait = pull_wait
        self._pull_sleep = pull_sleep
        self._clock = clock
        self._child: ChildProcess | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._settled = asyncio.Event()
        self._stopped: asyncio.Future[None] | None = None
        self._fatal: OllamaFatalError | None = None

    @property
    def settings(self) -> Settings:
        """The settings this supervisor runs with."""
        return self._settings

    @property
    def child(self) -> ChildProcess | None:
        """The current ``ollama serve`` child (None before the first spawn)."""
        return self._child

    @property
    def fatal(self) -> OllamaFatalError | None:
        """Why the supervisor halted, if it did."""
        return self._fatal

    async def start(self) -> None:
        """Start supervising in a background task; returns at once.

        Raises:
            RuntimeError: already started.
        """
        if self._task is not None:
            raise RuntimeError("the supervisor was already started")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self._settings.pull_concurrency + 4, force_close=True
            ),
        )
        self._task = asyncio.create_task(self._run(), name="ollama-supervisor")

    async def stop(self) -> None:
        """Stop supervising and stop the child. Idempotent; concurrent callers all wait."""
        if self._stopped is not None:
            await asyncio.shield(self._stopped)
            return
        self._stopped = asyncio.get_running_loop().create_future()
        try:
            self._stopping.set()
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            if self._child is not None:
                await self._child.stop(self._stop_grace)
                if self._fatal is None:
                    self._state.set_ollama(OllamaStatus.STOPPED)
            if self._session is not None:
                await self._session.close()
        finally:
            self._settled.set()  # nothing more will happen: release the waiters
            self._stopped.set_result(None)

    def kill_now(self) -> None:
        """SIGKILL the child's process group at once (synchronous; for a forced exit)."""
        if self._child is not None:
            self._child.signal_group(signal.SIGKILL)

    async def wait_settled(self) -> None:
        """Block until one pass over the models has finished (each present, ready or failed),
        the supervisor halted, or it was stopped. A pass interrupted by a crash does not count.
        """
        await self._settled.wait()

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def cleanup_ctx(self, _app: web.Application) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: start on application startup, stop on cleanup."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    # -- the supervision loop -------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._supervise()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: say so on /readyz rather than die silently
            log.exception("supervisor crashed")
            self._halt(OllamaFatalError(f"the supervisor crashed: {exc!r}", attempts=0))

    async def _supervise(self) -> None:
        attempts = self._settings.ollama_start_attempts
        restarting = False
        while not self._stopping.is_set():
            started = self._clock()
            try:
                child, version = await self._start()
            except OllamaStartError as exc:
                failures = self._start_backoff.failures + 1
                log.error(
                    "ollama failed to start",
                    error=exc.message,
                    attempt=failures,
                    attempts=attempts,
                    stderr_tail=list(exc.stderr_tail),
                )
                if failures >= attempts:
                    plural = "s" if failures > 1 else ""
                    reason = f"{exc.describe()} (gave up after {failures} attempt{plural})"
                    self._halt(OllamaFatalError(reason, failures))
                    return
                delay = self._start_backoff.next_delay()
                self._state.set_ollama(
                    OllamaStatus.RESTARTING if restarting else OllamaStatus.STARTING,
                    f"{exc.describe()} (attempt {failures} of {attempts}; retrying in {delay:g}s)",
                )
                await self._pause(delay)
                continue
            self._start_backoff.reset()
            log.info(
                "ollama ready",
                version=version,
                pid=child.pid,
                seconds=round(self._clock() - started, 3),
            )
            self._state.set_ollama(OllamaStatus.UP)
            returncode = await self._serve(child)
            if returncode is None:  # stopping
                return
            # The child died after it was ready.
            await child.drain()
            await child.stop(self._stop_grace)  # reaps, and kills runners it left behind
            uptime = self._clock() - started
            delay = self._restart_backoff.next_delay(uptime)
            log.error(
                "ollama exited unexpectedly",
                pid=child.pid,
                returncode=returncode,
                how=child.describe_exit(),
                uptime=round(uptime, 3),
                restart_in=delay,
                stderr_tail=list(child.stderr_tail),
            )
            self._settled.clear()
            self._state.set_ollama(
                OllamaStatus.RESTARTING,
                f"ollama serve {child.describe_exit()}; restarting in {delay:g}s",
            )
            for tag in self._state.models:
                self._state.set_model(tag, ModelStatus.PENDING, reason="waiting for Ollama")
            restarting = True
            await self._pause(delay)

    async def _start(self) -> tuple[ChildProcess, str]:
        """Spawn a child and wait until it answers; the child and Ollama's version.

        Raises:
            OllamaStartError: it could not be run, exited, or never answered (it is stopped).
        """
        assert self._session is not None
        await ensure_port_free(self._settings)
        try:
            executable = self._executable or resolve_executable(self._settings.ollama_bin)
            child = self._child = ollama_child(self._settings, executable)
            await child.start()
        except (OSError, ValueError) as exc:  # ConfigError is a ValueError
            raise OllamaStartError(f"could not run {self._settings.ollama_bin!r}: {exc}") from exc
        try:
            version = await wait_until_ready(
                self._session,
                child,
                self._settings.ollama_url,
                start_timeout=self._settings.ollama_start_timeout,
            )
        except OllamaStartError:
            await child.stop(self._stop_grace)
            raise
        return child, version

    async def _serve(self, child: ChildProcess) -> int | None:
        """Prepare the models while watching the child; its exit status, or None on stop."""
        prepare = asyncio.create_task(self._prepare(), name="ollama-models")
        exited = asyncio.ensure_future(child.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (prepare, exited, stopping):
                task.cancel()
            await asyncio.gather(prepare, exited, stopping, return_exceptions=True)
        return None if self._stopping.is_set() else child.returncode

    async def _prepare(self) -> None:
        assert self._session is not None
        preparer = ModelPreparer(
            self._session,
            self._settings.ollama_url,
            self._state,
            self._settings.catalog,
            concurrency=self._settings.pull_concurrency,
            attempts=self._settings.pull_retries,
            warm=self._warm,
            wait=self._pull_wait,
            sleep=self._pull_sleep,
            shutdown=self._stopping,
            clock=self._clock,
            on_pull=self._on_pull,
        )
        started = self._clock()
        try:
            await preparer.run()
        except Exception:  # a bug: the models keep their last state; say so loudly
            log.exception("model preparation crashed")
        counts: dict[str, int] = {}
        for model in self._state.models.values():
            counts[str(model.status)] = counts.get(str(model.status), 0) + 1
        log.info("models settled", seconds=round(self._clock() - started, 3), **counts)
        self._settled.set()

    async def _pause(self, delay: float) -> None:
        """Wait ``delay`` seconds, or less if stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    def _halt(self, fatal: OllamaFatalError) -> None:
        self._fatal = fatal
        log.error("ollama failed; giving up", reason=fatal.reason, attempts=fatal.attempts)
        self._state.set_ollama(OllamaStatus.FAILED, fatal.reason)
        self._settled.set()
