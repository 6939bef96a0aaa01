"""Helpers for the supervisor suite: named timeouts, wait helpers, instances and proxies.

Timeouts are named constants; waiting is done by polling a condition, never by a blind sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from proxy.testing.net import free_port
from tests.process_tools import alive as alive
from tests.process_tools import is_sim as is_sim
from tests.process_tools import kill_tree as kill_tree
from tests.process_tools import sims_using as sims_using
from tests.process_tools import wait_until as wait_until

REPO = Path(__file__).resolve().parents[2]
SIM_BIN = Path(sys.executable).with_name("ollama-sim")

READY_TIMEOUT = 20.0
"""The longest any test waits for an instance to become ready (seconds)."""
EXIT_TIMEOUT = 15.0
"""The longest a process may take to exit when told to (seconds)."""
POLL_INTERVAL = 0.02
"""How often wait helpers re-check their condition (seconds)."""
HTTP_TIMEOUT = 5.0
"""One test HTTP request (seconds)."""


async def async_wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """:func:`wait_until` for the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL)


async def wait_for(awaitable: Awaitable[Any], timeout: float, what: str) -> Any:
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout:g}s waiting for {what}")


def http_get(url: str, timeout: float = HTTP_TIMEOUT) -> tuple[int, Any]:
    """GET ``url``; ``(status, parsed JSON body)``, or ``(0, error)`` when unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


def pull_log(state_dir: Path) -> list[dict[str, Any]]:
    """The simulator's ``pulls.log``: one dict per pull outcome."""
    path = state_dir / "pulls.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Instance:
    """Where one instance lives: ports, directories, and the environment to run it with."""

    tmp: Path
    proxy_port: int = field(default_factory=free_port)
    ollama_port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def models_dir(self) -> Path:
        return self.tmp / "models"

    @property
    def state_dir(self) -> Path:
        return self.tmp / "sim-state"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def ollama_url(self) -> str:
        return f"http://127.0.0.1:{self.ollama_port}"

    def pulls(self) -> list[dict[str, Any]]:
        return pull_log(self.state_dir)

    def readyz(self) -> tuple[int, Any]:
        return http_get(f"{self.url}/readyz")


@dataclass
class Proxy:
    """A running ``python -m proxy <command>``; its stderr goes to ``log_path``."""

    popen: subprocess.Popen[bytes]
    instance: Instance
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_lines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def ollama_pids(self) -> list[int]:
        """Live children of the proxy that are the simulator."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [c.pid for c in children if alive(c.pid) and is_sim(c)]

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> Any:
        def ready() -> Any:
            self.assert_running()
            status, body = self.instance.readyz()
            return body if status == 200 else None

        return wait_until(ready, timeout, f"/readyz 200 (log: {self.log_tail()})")

    def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the proxy did not exit within {timeout:g}s (log: {self.log_tail()})")

    def assert_running(self) -> None:
        code = self.popen.poll()
        if code is not None:
            pytest.fail(f"the proxy exited with {code} (log: {self.log_tail()})")

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_lines()[-lines:])


def run_cli(
    *args: str, env: Mapping[str, str], timeout: float = READY_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m proxy <args>`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


__all__ = [
    "EXIT_TIMEOUT",
    "HTTP_TIMEOUT",
    "POLL_INTERVAL",
    "READY_TIMEOUT",
    "SIM_BIN",
    "Instance",
    "Proxy",
    "alive",
    "async_wait_until",
    "http_get",
    "kill_tree",
    "pull_log",
    "run_cli",
    "sims_using",
    "wait_for",
    "wait_until",
]
