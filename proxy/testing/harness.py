"""What the tests and benchmarks use to set things up, beside the processes of
:mod:`proxy.testing.services`: free ports, bounded waits, one-shot HTTP, the environment of a
proxy in front of the simulator, and an aiohttp app served in-process.

Like ``aiohttp.test_utils`` it is shipped with the package. Every wait is bounded and raises
:class:`HarnessError` (an ``AssertionError``, so pytest reports it as a failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.test_utils import TestServer

__all__ = [
    "HarnessError",
    "await_until",
    "free_port",
    "http_json",
    "proxy_env",
    "serve_app",
    "simulator_command",
    "wait_until",
]

__test__ = False  # not a test module, whatever pytest's collection rules say

POLL_INTERVAL = 0.01
"""How often waits look again (seconds)."""

HTTP_TIMEOUT = 5.0
"""One harness HTTP request (seconds)."""

T = TypeVar("T")


class HarnessError(AssertionError):
    """Something did not start, exit or answer as a test needed; the message says why."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``predicate`` until it returns something truthy and return it.

    Raises:
        HarnessError: not within ``timeout`` seconds (the message names ``what``).
    """
    check_deadline = _deadline(timeout, what)
    while not (value := predicate()):
        check_deadline()
        time.sleep(POLL_INTERVAL)
    return value


async def await_until(predicate: Callable[[], T], within: float, what: str) -> T:
    """:func:`wait_until` for the event loop: sleeps without blocking it."""
    check_deadline = _deadline(within, what)
    while not (value := predicate()):
        check_deadline()
        await asyncio.sleep(POLL_INTERVAL)
    return value


def _deadline(within: float, what: str) -> Callable[[], None]:
    """A check that raises :class:`HarnessError` once ``within`` seconds have passed."""
    deadline = time.monotonic() + within

    def check() -> None:
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {within:g} s waiting for {what}")

    return check


def http_json(
    url: str,
    *,
    method: str = "GET",
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = HTTP_TIMEOUT,
) -> tuple[int, Any]:
    """One request on a fresh connection: ``(status, JSON body or text)``, ``(0, error)`` if
    nothing answered. ``body`` is sent as is when it is ``bytes``, else as JSON."""
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request(
            method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})}
        )
        response = conn.getresponse()
        raw = response.read()
    except OSError as exc:
        return 0, str(exc)
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw.decode(errors="replace")


def simulator_command() -> list[str]:
    """``ollama-sim`` next to this interpreter, else ``python -m proxy.testing.simulator``."""
    script = Path(sys.executable).with_name("ollama-sim")
    return [str(script)] if script.exists() else [sys.executable, "-m", "proxy.testing.simulator"]


def proxy_env(
    workdir: Path, base: Mapping[str, str] | None = None, **overrides: str
) -> dict[str, str]:
    """The environment of a proxy supervising the simulator on free loopback ports.

    ``base`` (default: this process's environment) without its ``OLLAMA_*``, ``SIM_*`` and
    ``PROXY_*`` variables, plus: the simulator as ``OLLAMA_BIN``, its models and state under
    ``workdir``, the chat model ``smollm2:135m`` and the embedding model ``all-minilm:l6-v2``,
    JSON logs and fast simulated pulls; then ``overrides``.
    """
    models, state = workdir / "models", workdir / "sim-state"
    models.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if not k.startswith(("OLLAMA_", "SIM_", "PROXY_"))}
    env.update(
        OLLAMA_BIN=simulator_command()[0],
        OLLAMA_INTERNAL_HOST=f"127.0.0.1:{free_port()}",
        OLLAMA_MODELS=str(models),
        OLLAMA_CHAT_MODELS="smollm2:135m",
        OLLAMA_EMBEDDING_MODELS="all-minilm:l6-v2",
        PROXY_HOST="127.0.0.1",
        PROXY_PORT=str(free_port()),
        LOG_FORMAT="json",
        LOG_LEVEL="info",
        SIM_STATE_DIR=str(state),
        SIM_PULL_DELAY="0.001",
        SIM_PULL_STEPS="3",
        SHUTDOWN_GRACE="5",
        READY_TIMEOUT="60",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


@contextlib.asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port in this event loop; yields its base URL."""
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()
