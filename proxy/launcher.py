"""Run the proxy (``python -m proxy serve``) as a child of UbiOps request process 0.

One daemon thread owns the child: it spawns it, waits for it, and restarts it with a capped
backoff when it dies, logging why (exit status or signal). It is also the only thread that
forks, which matters because the child's parent-death signal (Linux ``PR_SET_PDEATHSIG``) fires
when the *thread* that forked it ends: the child never outlives the watcher, and the watcher
lives until :meth:`ProxyLauncher.stop` or the end of the process.

The child runs in its own process group. :meth:`ProxyLauncher.stop` sends it SIGTERM (the proxy
drains and stops Ollama), waits up to a grace period, then SIGKILLs the whole group so nothing
is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from proxy.config import Settings
from proxy.logs import get_logger
from proxy.ollama_process import describe_returncode

__all__ = ["EXIT_CONFIG_ERROR", "LauncherError", "ProxyLauncher"]

log = get_logger("proxy.launcher")

EXIT_CONFIG_ERROR = 2
"""The proxy's exit status for an unusable configuration: restarting cannot help."""

_PR_SET_PDEATHSIG = 1
_BACKOFF_INITIAL = 0.5
_BACKOFF_MAX = 30.0
_STABLE_AFTER = 60.0
_STOP_MARGIN = 5.0


class LauncherError(RuntimeError):
    """The proxy cannot be run: it could not be spawned, or it exited with a fatal status."""


class ProxyLauncher:
    """Start, watch and stop the proxy child of one request process.

    Args:
        settings: the instance settings (the stop grace is ``shutdown_grace`` plus a margin).
        command: what to run; default ``[sys.executable, "-m", "proxy", "serve"]``.
        env: the child's environment; default this process's environment.
        backoff_initial, backoff_max: restart delays; the delay doubles after each crash of a
            child that ran less than ``stable_after`` seconds and resets otherwise.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        backoff_initial: float = _BACKOFF_INITIAL,
        backoff_max: float = _BACKOFF_MAX,
        stable_after: float = _STABLE_AFTER,
    ) -> None:
        self._command = list(command or [sys.executable, "-m", "proxy", "serve"])
        self._env = dict(os.environ if env is None else env)
        self._env.setdefault("PYTHONUNBUFFERED", "1")
        self._grace = settings.shutdown_grace + _STOP_MARGIN
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._stable_after = stable_after
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._spawned = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._failure: str | None = None
        self._starts = 0

    @property
    def pid(self) -> int | None:
        """The running child's pid, or None between a crash and its restart."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

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
        self._thread = threading.Thread(target=self._watch, name="proxy-launcher", daemon=True)
        self._thread.start()
        self._spawned.wait()
        self.check()

    def check(self) -> None:
        """Raise :class:`LauncherError` if the launcher gave up on the proxy."""
        if self._failure is not None:
            raise LauncherError(self._failure)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the child and the watcher: SIGTERM, wait up to the grace, SIGKILL its group.

        Blocks until the child is gone. Safe to call more than once and before :meth:`start`.
        """
        grace = self._grace if timeout is None else timeout
        with self._lock:
            self._stopping.set()
            proc = self._proc
        if proc is not None and proc.returncode is None:
            log.info("stopping the proxy", pid=proc.pid, grace_s=grace)
            _signal(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("the proxy did not stop in time; killing it", pid=proc.pid)
        if proc is not None:
            # Whatever is left in its process group (the proxy itself, or its children).
            _killpg(proc.pid)
            proc.wait()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _watch(self) -> None:
        delay = self._backoff_initial
        while True:
            with self._lock:
                if self._stopping.is_set():
                    break
                try:
                    proc = self._spawn()
                except OSError as exc:
                    self._failure = f"cannot start the proxy ({' '.join(self._command)}): {exc}"
                    log.error("proxy start failed", error=self._failure)
                    break
                finally:
                    self._spawned.set()
            started = time.monotonic()
            returncode = proc.wait()
            if self._stopping.is_set():
                log.info("proxy stopped", how=describe_returncode(returncode))
                break
            ran = time.monotonic() - started
            _killpg(proc.pid)
            if returncode == EXIT_CONFIG_ERROR:
                self._failure = (
                    f"the proxy {describe_returncode(returncode)} (a configuration error; see "
                    "its log above); fix the environment variables and restart the deployment"
                )
                log.error("proxy failed; not restarting", pid=proc.pid, reason=self._failure)
                break
            delay = self._backoff_initial if ran >= self._stable_after else delay
            log.warning(
                "proxy died; restarting",
                pid=proc.pid,
                how=describe_returncode(returncode),
                ran_s=round(ran, 1),
                restart_in_s=delay,
                restarts=self._starts,
            )
            if self._stopping.wait(delay):
                break
            delay = min(delay * 2, self._backoff_max)
        self._spawned.set()

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            self._command,
            env=self._env,
            stdin=subprocess.DEVNULL,
            process_group=0,
            preexec_fn=_die_with_parent(os.getpid()),
        )
        self._proc = proc
        self._starts += 1
        log.info("proxy started", pid=proc.pid, start=self._starts, command=" ".join(self._command))
        return proc


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` giving the child SIGTERM when its parent thread ends (Linux only).

    The libc function is looked up here, before the fork, so the child only makes the call.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
