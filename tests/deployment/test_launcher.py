"""ProxyLauncher: spawn, restart with backoff, fatal exits, stop escalation, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from proxy.children import Backoff
from proxy.config import Settings
from proxy.launcher import LauncherError, ProxyLauncher
from proxy.testing.harness import wait_until

START_TIMEOUT = 10.0
RESTART_TIMEOUT = 10.0

FAST = Backoff(initial=0.05, maximum=1.0)
SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_child_killed_is_restarted_then_stopped() -> None:
    launcher = ProxyLauncher(Settings(), command=SLEEPER, backoff=FAST)
    launcher.start()
    try:
        first = launcher.pid
        assert first is not None
        assert os.getpgid(first) == first, "the child leads its own process group"
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: launcher.pid not in (None, first), RESTART_TIMEOUT, "a restart")
        assert launcher.restarts == 1
        launcher.check()
    finally:
        launcher.stop()
    assert launcher.pid is None
    assert _gone(first)


def test_configuration_error_exit_is_not_restarted() -> None:
    command = [sys.executable, "-c", "raise SystemExit(2)"]
    launcher = ProxyLauncher(Settings(), command=command, backoff=FAST)
    launcher.start()
    try:
        wait_until(lambda: launcher.failure is not None, START_TIMEOUT, "the launcher to give up")
        with pytest.raises(LauncherError, match="exited with status 2"):
            launcher.check()
        assert launcher.restarts == 0
    finally:
        launcher.stop()


def test_missing_executable_fails_start() -> None:
    launcher = ProxyLauncher(Settings(), command=["/nonexistent/python"])
    with pytest.raises(LauncherError, match="cannot start the proxy"):
        launcher.start()
    launcher.stop()


def test_stop_kills_a_child_ignoring_sigterm_and_its_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = textwrap.dedent(
        f"""
        import os, signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pids)!r}, "w").write(str(grandchild.pid))
        time.sleep(120)
        """
    )
    launcher = ProxyLauncher(Settings(shutdown_grace=0.0), command=[sys.executable, "-c", script])
    launcher.start()
    wait_until(lambda: pids.exists() and pids.read_text(), START_TIMEOUT, "the grandchild")
    child, grandchild = launcher.pid, int(pids.read_text())
    assert child is not None
    launcher.stop()  # SHUTDOWN_GRACE=0 plus the margin for Ollama's own stop
    wait_until(lambda: _gone(child) and _gone(grandchild), START_TIMEOUT, "no orphans")


def test_child_dies_with_its_parent(tmp_path: Path) -> None:
    """The parent-death signal: a SIGKILLed request process takes its proxy with it."""
    pid_file = tmp_path / "pid"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from proxy.config import Settings
        from proxy.launcher import ProxyLauncher
        launcher = ProxyLauncher(Settings(), command={SLEEPER!r})
        launcher.start()
        open({str(pid_file)!r}, "w").write(str(launcher.pid))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    parent = subprocess.run([sys.executable, "-c", script], check=False, timeout=30)
    assert parent.returncode == -signal.SIGKILL
    child = int(pid_file.read_text())
    wait_until(lambda: _gone(child), START_TIMEOUT, "the orphaned child to die")
