"""Helpers for the supervisor suite: named timeouts and waits for the event loop.

Processes come from :mod:`proxy.testing.harness`; waiting is done by polling a condition, never
by a blind sleep.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import Any

import pytest

from proxy.testing.harness import await_until as await_until
from proxy.testing.harness import wait_until as wait_until
from tests.process_tools import alive as alive
from tests.process_tools import is_sim as is_sim
from tests.process_tools import kill_tree as kill_tree
from tests.process_tools import sims_using as sims_using

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


async def wait_for(awaitable: Awaitable[Any], timeout: float, what: str) -> Any:
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout:g}s waiting for {what}")


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
