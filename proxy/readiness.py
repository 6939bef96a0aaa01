"""Wait for a freshly spawned ``ollama serve`` to answer, or say precisely why it did not.

Polling starts the moment the child is spawned. The first polls come fast and the delay doubles
up to a cap, so an Ollama that answers is noticed within one cap interval (20 ms by default;
a refused loopback connection costs tens of microseconds) while a slow start costs little.
Between polls the wait is on the child's exit, never a blind sleep: a child that dies is
noticed at once. Three outcomes, each distinct:

* ready: returns Ollama's version;
* :class:`OllamaExitedError`: the child exited first (exit status and last stderr lines);
* :class:`OllamaStartTimeoutError`: ``OLLAMA_START_TIMEOUT`` passed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

import aiohttp

from proxy.logs import get_logger
from proxy.ollama_process import OllamaProcess

__all__ = [
    "FIRST_POLL_DELAY",
    "MAX_POLL_DELAY",
    "POLL_REQUEST_TIMEOUT",
    "OllamaExitedError",
    "OllamaStartError",
    "OllamaStartTimeoutError",
    "probe_version",
    "wait_until_ready",
]

FIRST_POLL_DELAY = 0.005
"""Delay after the first failed poll (seconds); it doubles after each failure..."""

MAX_POLL_DELAY = 0.02
"""...up to this cap (seconds): the most a ready Ollama goes unnoticed."""

POLL_REQUEST_TIMEOUT = 2.0
"""One ``GET /api/version`` may take this long before it counts as a failed poll (seconds)."""

# Lazy: resolved at first use, so it follows configure_logging() and capture_logs().
log = get_logger(__name__)


class OllamaStartError(Exception):
    """``ollama serve`` did not become ready; ``stderr_tail`` holds its last stderr lines."""

    def __init__(self, message: str, stderr_tail: Sequence[str] = ()) -> None:
        self.message = message
        self.stderr_tail = tuple(stderr_tail)
        super().__init__(self.describe())

    def describe(self) -> str:
        """The message, followed by the last stderr line(s) when there are any."""
        if not self.stderr_tail:
            return self.message
        tail = " | ".join(self.stderr_tail[-5:])
        return f"{self.message}; last stderr: {tail}"


class OllamaExitedError(OllamaStartError):
    """The child exited before it answered."""

    def __init__(self, returncode: int, how: str, stderr_tail: Sequence[str] = ()) -> None:
        self.returncode = returncode
        super().__init__(f"ollama serve {how} before it was ready", stderr_tail)


class OllamaStartTimeoutError(OllamaStartError):
    """The child was still not answering when the start timeout passed."""

    def __init__(self, timeout: float, last_error: str | None, stderr_tail: Sequence[str] = ()):
        self.timeout = timeout
        self.last_error = last_error
        detail = f" (last poll: {last_error})" if last_error else ""
        super().__init__(
            f"ollama serve did not answer within OLLAMA_START_TIMEOUT={timeout:g}s{detail}",
            stderr_tail,
        )


async def probe_version(
    session: aiohttp.ClientSession, base_url: str, request_timeout: float = POLL_REQUEST_TIMEOUT
) -> str:
    """``GET /api/version`` once and return the version.

    Raises:
        aiohttp.ClientError, TimeoutError: Ollama did not answer.
        ValueError: it answered, but not like Ollama.
    """
    client_timeout = aiohttp.ClientTimeout(total=request_timeout)
    async with session.get(f"{base_url}/api/version", timeout=client_timeout) as response:
        if response.status != 200:
            raise ValueError(f"GET /api/version answered HTTP {response.status}")
        body = await response.json(content_type=None)
    version = body.get("version") if isinstance(body, dict) else None
    if not isinstance(version, str):
        raise ValueError("GET /api/version answered without a version")
    return version


async def wait_until_ready(
    session: aiohttp.ClientSession,
    process: OllamaProcess,
    base_url: str,
    *,
    start_timeout: float,
    first_delay: float = FIRST_POLL_DELAY,
    max_delay: float = MAX_POLL_DELAY,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Poll ``process`` at ``base_url`` until it answers; return Ollama's version.

    Blocks until Ollama answers, the child exits or ``start_timeout`` seconds pass. Cancelling is
    safe; the child is left running (stopping it is the caller's business).

    Raises:
        OllamaExitedError: the child exited first.
        OllamaStartTimeoutError: the timeout passed first.
    """
    deadline = clock() + start_timeout
    exited = asyncio.ensure_future(process.wait())
    delay = first_delay
    last_error: str | None = None
    polls = 0
    try:
        while True:
            remaining = deadline - clock()
            if remaining <= 0:
                raise OllamaStartTimeoutError(start_timeout, last_error, process.stderr_tail)
            polls += 1
            probe = asyncio.ensure_future(
                probe_version(session, base_url, min(POLL_REQUEST_TIMEOUT, remaining))
            )
            await asyncio.wait({probe, exited}, return_when=asyncio.FIRST_COMPLETED)
            if not probe.done():
                probe.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probe
            elif probe.exception() is None:
                version = probe.result()
                log.debug("ollama answered", version=version, polls=polls)
                return version
            else:
                last_error = _describe(probe.exception())
            if exited.done():
                await process.drain()
                raise OllamaExitedError(
                    exited.result(), process.describe_exit(), process.stderr_tail
                )
            pause = min(delay, max(deadline - clock(), 0.0))
            await asyncio.wait({exited}, timeout=pause)
            delay = min(delay * 2, max_delay)
    finally:
        exited.cancel()


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no error"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
