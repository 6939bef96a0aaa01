"""Pull one model from Ollama's registry: ``POST /api/pull``, its progress, and its failures.

Ollama reports most failures *in band*, under HTTP 200: a ``{"error": ...}`` line, or a stream
that ends without ``{"status": "success"}``. Both count as failures. A model that does not exist
("file does not exist", "not found") is a :class:`PermanentPullError` carrying Ollama's message;
anything else that can pass (connection errors, 5xx, a cut stream, other in-band errors) is a
:class:`TransientPullError`, which :mod:`proxy.preparer` retries with backoff.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp
import tenacity
from tenacity.wait import wait_base

from proxy.logs import get_logger
from proxy.ollama import describe_error
from proxy.state import InstanceState, ModelStatus

__all__ = [
    "PermanentPullError",
    "PullError",
    "PullProgress",
    "TransientPullError",
    "default_pull_wait",
    "error_message",
    "pull_model",
]

PROGRESS_LOG_INTERVAL = 5.0
"""At most one progress line per model per this many seconds (seconds)..."""

PROGRESS_LOG_STEP = 0.10
"""...unless the progress crossed another step of this size (a fraction)."""

PROGRESS_STATE_STEP = 0.01
"""``/readyz`` progress is updated when it moves by this much (a fraction)."""

PULL_READ_TIMEOUT = 600.0
"""A pull whose stream stays silent this long counts as stalled (seconds)."""

CONNECT_TIMEOUT = 10.0
"""Connecting to the local Ollama may take this long (seconds)."""

_PERMANENT_MARKERS = (
    "file does not exist",
    "not found",
    "invalid model name",
    "requires a newer version",
)
_RETRYABLE_STATUSES = frozenset({408, 429})

log = get_logger(__name__)


class PullError(Exception):
    """A pull of ``tag`` failed; ``message`` is Ollama's (or the transport's) explanation."""

    def __init__(self, tag: str, message: str) -> None:
        super().__init__(message)
        self.tag = tag
        self.message = message


class PermanentPullError(PullError):
    """The pull cannot succeed by trying again (the model does not exist)."""


class TransientPullError(PullError):
    """The pull may succeed if tried again."""


def default_pull_wait() -> wait_base:
    """Exponential backoff with jitter between pull attempts: 1 s, 2 s, 4 s ... up to 30 s."""
    return tenacity.wait_exponential_jitter(initial=1.0, max=30.0, jitter=1.0)


async def pull_model(
    session: aiohttp.ClientSession,
    base_url: str,
    tag: str,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Pull ``tag`` once, calling ``on_progress`` with every NDJSON progress object.

    Returns only after Ollama said ``{"status": "success"}``.

    Raises:
        PermanentPullError: the model does not exist (or the name is invalid).
        TransientPullError: anything that may pass: connection errors, 5xx, a cut or
            malformed stream, another in-band error.
    """
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=CONNECT_TIMEOUT, sock_read=PULL_READ_TIMEOUT
    )
    try:
        async with session.post(
            f"{base_url}/api/pull", json={"model": tag, "stream": True}, timeout=timeout
        ) as response:
            if response.status != 200:
                message = await error_message(response)
                if response.status >= 500 or response.status in _RETRYABLE_STATUSES:
                    raise TransientPullError(tag, message)
                raise PermanentPullError(tag, message)
            async for raw in response.content:
                line = raw.strip()
                if not line:
                    continue
                try:
                    item = json.loads(line)
                except ValueError:
                    raise TransientPullError(
                        tag, f"malformed progress line: {line[:200]!r}"
                    ) from None
                if not isinstance(item, dict):
                    continue
                if "error" in item:
                    raise _classify(tag, str(item["error"]))
                if item.get("status") == "success":
                    return
                if on_progress is not None:
                    on_progress(item)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TransientPullError(tag, describe_error(exc)) from exc
    raise TransientPullError(tag, 'the pull stream ended without {"status": "success"}')


class PullProgress:
    """Adds up one pull's per-layer progress; logs it at a sane rate and feeds ``/readyz``."""

    def __init__(self, tag: str, state: InstanceState, clock: Callable[[], float]) -> None:
        self._tag = tag
        self._state = state
        self._clock = clock
        self._layers: dict[str, tuple[int, int]] = {}
        self._last_status: str | None = None
        self._logged_at = clock()
        self._logged_bytes = 0
        self._logged_step = 0
        self._state_fraction = 0.0
        self.total = 0

    def update(self, item: dict[str, Any]) -> None:
        status = item.get("status")
        if (
            isinstance(status, str)
            and not status.startswith("pulling ")
            and status != (self._last_status)
        ):
            log.debug("pull status", model=self._tag, status=status)
        self._last_status = status if isinstance(status, str) else self._last_status
        digest, total = item.get("digest"), item.get("total")
        if not isinstance(digest, str) or not isinstance(total, int) or total <= 0:
            return
        completed = item.get("completed")
        done = min(completed, total) if isinstance(completed, int) and completed > 0 else 0
        self._layers[digest] = (done, total)
        completed_bytes = sum(c for c, _ in self._layers.values())
        self.total = sum(t for _, t in self._layers.values())
        fraction = completed_bytes / self.total
        if abs(fraction - self._state_fraction) >= PROGRESS_STATE_STEP:
            self._state_fraction = fraction
            self._state.set_model(self._tag, ModelStatus.PULLING, progress=fraction)
        now = self._clock()
        step = int(fraction / PROGRESS_LOG_STEP)
        if now - self._logged_at >= PROGRESS_LOG_INTERVAL or step > self._logged_step:
            elapsed = max(now - self._logged_at, 1e-6)
            rate = max(completed_bytes - self._logged_bytes, 0) / elapsed
            log.info(
                "pull progress",
                model=self._tag,
                percent=round(fraction * 100, 1),
                completed_bytes=completed_bytes,
                total_bytes=self.total,
                bytes_per_second=round(rate),
            )
            self._logged_at, self._logged_bytes, self._logged_step = now, completed_bytes, step


def _classify(tag: str, message: str) -> PullError:
    lowered = message.lower()
    if any(marker in lowered for marker in _PERMANENT_MARKERS):
        return PermanentPullError(tag, message)
    return TransientPullError(tag, message)


async def error_message(response: aiohttp.ClientResponse) -> str:
    """Ollama's ``{"error"}`` text of a failed answer, or its status and the start of its body."""
    text = (await response.text(errors="replace")).strip()
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return f"HTTP {response.status}: {text[:200]}" if text else f"HTTP {response.status}"
