"""The ``ollama serve`` child: its command and environment, its log lines, and its start-up.

:func:`ollama_child` builds the :class:`~proxy.children.ChildProcess` the supervisor runs: on
loopback only, without the proxy's secrets, its output relayed as structured events with
``source="ollama"`` (Go's ``level=`` mapped onto ours; Gin's per-request access lines at debug,
since the proxy logs every request itself). :func:`wait_until_ready` watches a
freshly spawned child until it answers. Polling starts at once; the delay doubles up to a cap,
so an Ollama that answers is noticed within one cap interval (20 ms) while a slow start costs
little. Between polls the wait is on the child's exit, never a blind sleep. Three outcomes:

* ready: returns Ollama's version;
* :class:`OllamaExitedError`: the child exited first (exit status and last stderr lines);
* :class:`OllamaStartTimeoutError`: ``OLLAMA_START_TIMEOUT`` passed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from proxy.children import ChildProcess, LineSink
from proxy.config import ConfigError, Settings
from proxy.logs import get_logger

__all__ = [
    "MAX_POLL_DELAY",
    "WITHHELD_VARIABLES",
    "OllamaExitedError",
    "OllamaStartError",
    "OllamaStartTimeoutError",
    "build_child_env",
    "describe_error",
    "ensure_port_free",
    "get_field",
    "ollama_child",
    "probe_version",
    "resolve_executable",
    "wait_until_ready",
]

FIRST_POLL_DELAY = 0.005
"""Delay after the first failed poll (seconds); it doubles after each failure..."""

MAX_POLL_DELAY = 0.02
"""...up to this cap (seconds): the most a ready Ollama goes unnoticed."""

POLL_REQUEST_TIMEOUT = 2.0
"""One ``GET /api/version`` may take this long before it counts as a failed poll (seconds)."""

_PORT_CHECK = 1.0
"""How long a connection to the internal address may take before it counts as free (seconds)."""

WITHHELD_VARIABLES = ("PROXY_API_KEY", "PROXY_ADMIN_KEY", "UBIOPS_API_TOKEN")
"""Secrets of the proxy and the deployment tooling that ``ollama serve`` never gets."""

_GIN_ACCESS = "[GIN] "
"""Gin's access line, one per request Ollama serves: the proxy's own access log says more."""
_GO_LEVEL = re.compile(r"\blevel=(DEBUG|INFO|WARN|WARNING|ERROR)\b")
_GO_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
}

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
        return f"{self.message}; last stderr: {' | '.join(self.stderr_tail[-5:])}"


class OllamaExitedError(OllamaStartError):
    """The child exited before it answered."""

    def __init__(self, returncode: int, how: str, stderr_tail: Sequence[str] = ()) -> None:
        self.returncode = returncode
        super().__init__(f"ollama serve {how} before it was ready", stderr_tail)


class OllamaStartTimeoutError(OllamaStartError):
    """The child was still not answering when the start timeout passed."""

    def __init__(self, timeout: float, last_error: str | None, stderr_tail: Sequence[str] = ()):
        detail = f" (last poll: {last_error})" if last_error else ""
        super().__init__(
            f"ollama serve did not answer within OLLAMA_START_TIMEOUT={timeout:g}s{detail}",
            stderr_tail,
        )


async def ensure_port_free(settings: Settings) -> None:
    """Make sure nothing answers on Ollama's internal address before a child is started there.

    Otherwise the readiness poll would take another server's answers (a second proxy's Ollama, a
    stray ``ollama serve``) for the child's, while the child fails to listen.

    Raises:
        OllamaStartError: something accepts connections there.
    """
    try:
        connecting = asyncio.open_connection(
            settings.ollama_internal_host, settings.ollama_internal_port
        )
        _, writer = await asyncio.wait_for(connecting, _PORT_CHECK)
    except (OSError, TimeoutError):
        return
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    raise OllamaStartError(
        f"{settings.ollama_address} (OLLAMA_INTERNAL_HOST) is already in use, by another proxy's "
        "Ollama or an `ollama serve`; stop it or set OLLAMA_INTERNAL_HOST to a free port"
    )


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
    use for (:data:`WITHHELD_VARIABLES`) are left out; every other variable passes through.
    """
    env = dict(os.environ if environ is None else environ)
    for name in WITHHELD_VARIABLES:
        env.pop(name, None)
    env["OLLAMA_HOST"] = settings.ollama_address
    if not env.get("OLLAMA_KEEP_ALIVE", "").strip():
        env["OLLAMA_KEEP_ALIVE"] = "-1"
    return env


def ollama_child(settings: Settings, executable: str) -> ChildProcess:
    """A new, unstarted ``<executable> serve`` child for ``settings``."""
    return ChildProcess(
        [executable, "serve"],
        env=build_child_env(settings),
        name="ollama",
        output=_relay_output(),
    )


def _relay_output() -> LineSink:
    """Log each line of Ollama's output as an event at the level Go's ``slog`` gave it."""
    relay: Any = get_logger("ollama").bind(source="ollama")

    def emit(stream: str, line: str) -> None:
        if line.startswith(_GIN_ACCESS):
            relay.debug(line, stream=stream)
            return
        match = _GO_LEVEL.search(line)
        level = _GO_LEVELS[match.group(1)] if match else logging.INFO
        if line.startswith(("panic:", "fatal error:")):
            level = logging.ERROR
        relay.log(level, line, stream=stream)

    return emit


async def get_field(
    session: aiohttp.ClientSession, base_url: str, path: str, field: str, seconds: float
) -> Any:
    """``GET <path>`` on Ollama once; the ``field`` of the JSON object it answers.

    Raises:
        aiohttp.ClientError, TimeoutError: Ollama did not answer.
        ValueError: it answered, but not with such an object.
    """
    timeout = aiohttp.ClientTimeout(total=seconds)
    async with session.get(f"{base_url}{path}", timeout=timeout) as response:
        if response.status != 200:
            raise ValueError(f"GET {path} answered HTTP {response.status}")
        body = await response.json(content_type=None)
    if not isinstance(body, dict) or field not in body:
        raise ValueError(f"GET {path} answered without {field!r}")
    return body[field]


async def probe_version(
    session: aiohttp.ClientSession, base_url: str, request_timeout: float = POLL_REQUEST_TIMEOUT
) -> str:
    """``GET /api/version`` once and return the version (errors as :func:`get_field`)."""
    return str(await get_field(session, base_url, "/api/version", "version", request_timeout))


async def wait_until_ready(
    session: aiohttp.ClientSession,
    child: ChildProcess,
    base_url: str,
    *,
    start_timeout: float,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Poll ``child`` at ``base_url`` until it answers; return Ollama's version.

    Blocks until Ollama answers, the child exits or ``start_timeout`` seconds pass. Cancelling is
    safe; the child is left running (stopping it is the caller's business).

    Raises:
        OllamaExitedError: the child exited first.
        OllamaStartTimeoutError: the timeout passed first.
    """
    deadline = clock() + start_timeout
    exited = asyncio.ensure_future(child.wait())
    delay = FIRST_POLL_DELAY
    last_error: str | None = None
    try:
        while True:
            remaining = deadline - clock()
            if remaining <= 0:
                raise OllamaStartTimeoutError(start_timeout, last_error, child.stderr_tail)
            probe = asyncio.ensure_future(
                probe_version(session, base_url, min(POLL_REQUEST_TIMEOUT, remaining))
            )
            await asyncio.wait({probe, exited}, return_when=asyncio.FIRST_COMPLETED)
            if not probe.done():
                probe.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probe
            elif probe.exception() is not None:
                last_error = describe_error(probe.exception())
            elif not exited.done():  # an answer while the child runs (not another server's)
                return probe.result()
            if exited.done():
                await child.drain()
                raise OllamaExitedError(exited.result(), child.describe_exit(), child.stderr_tail)
            await asyncio.wait({exited}, timeout=min(delay, max(deadline - clock(), 0.0)))
            delay = min(delay * 2, MAX_POLL_DELAY)
    finally:
        exited.cancel()


def describe_error(exc: BaseException | None) -> str:
    """``TypeName: text`` of an error, for log events and reasons."""
    if exc is None:
        return "no error"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
