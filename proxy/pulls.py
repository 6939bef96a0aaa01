"""Make the configured models servable: list what is present, pull what is missing, warm them.

Each model moves through :class:`~proxy.state.InstanceState` as
``pending → pulling(progress) → present → loading → ready``, or ends ``failed`` with the
reason. One model failing never stops the others.

Pulls follow Ollama's protocol (``POST /api/pull`` streams NDJSON progress). Ollama reports
most failures *in band*, under HTTP 200: a ``{"error": ...}`` line, or a stream that ends
without ``{"status": "success"}``. Both count as failures. A model that does not exist
("file does not exist", "not found") fails at once with Ollama's message; anything else that
can pass (connection errors, 5xx, a cut stream, other in-band errors) is retried with
exponential backoff and jitter, ``PULL_RETRIES`` attempts in all.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import aiohttp
import tenacity
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from proxy.catalog import Model, name_key
from proxy.logs import get_logger
from proxy.state import InstanceState, ModelStatus

__all__ = [
    "PROGRESS_LOG_INTERVAL",
    "ModelPreparer",
    "PermanentPullError",
    "PullError",
    "TransientPullError",
    "WarmError",
    "default_pull_wait",
    "list_present",
    "pull_model",
    "warm_model",
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

LIST_TIMEOUT = 30.0
"""``GET /api/tags`` may take this long (seconds)."""

WARM_TIMEOUT = 1800.0
"""Loading one model may take this long (seconds)."""

WARM_UP_INPUT = "warm-up"
"""The text embedded to load an embedding model."""

_PERMANENT_MARKERS = (
    "file does not exist",
    "not found",
    "invalid model name",
    "requires a newer version",
)
_RETRYABLE_STATUSES = frozenset({408, 429})

# Lazy: resolved at first use, so it follows configure_logging() and capture_logs().
log = get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]


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


class WarmError(Exception):
    """Loading a model into memory failed."""


def default_pull_wait() -> wait_base:
    """Exponential backoff with jitter between pull attempts: 1 s, 2 s, 4 s ... up to 30 s."""
    return tenacity.wait_exponential_jitter(initial=1.0, max=30.0, jitter=1.0)


async def list_present(session: aiohttp.ClientSession, base_url: str) -> set[str]:
    """The :func:`~proxy.catalog.name_key` of every model Ollama has on disk (``/api/tags``).

    Raises:
        aiohttp.ClientError, TimeoutError, ValueError: Ollama did not answer sensibly.
    """
    timeout = aiohttp.ClientTimeout(total=LIST_TIMEOUT)
    async with session.get(f"{base_url}/api/tags", timeout=timeout) as response:
        if response.status != 200:
            raise ValueError(f"GET /api/tags answered HTTP {response.status}")
        body = await response.json(content_type=None)
    models = body.get("models") if isinstance(body, dict) else None
    if not isinstance(models, list):
        raise ValueError("GET /api/tags answered without a model list")
    present: set[str] = set()
    for entry in models:
        if isinstance(entry, dict):
            for field in ("name", "model"):
                if isinstance(entry.get(field), str):
                    present.add(name_key(entry[field]))
    return present


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
                message = await _error_message(response)
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
        raise TransientPullError(tag, _describe(exc)) from exc
    raise TransientPullError(tag, 'the pull stream ended without {"status": "success"}')


async def warm_model(session: aiohttp.ClientSession, base_url: str, model: Model) -> float:
    """Load ``model`` into memory and return how long that took (seconds).

    Chat models get an empty ``/api/generate`` (which only loads), embedding models embed one
    short text. No ``keep_alive`` is sent: the child runs with ``OLLAMA_KEEP_ALIVE=-1`` unless
    the operator chose otherwise, and the warm-up honours that choice like any request.

    Raises:
        WarmError: Ollama refused or failed to load it.
    """
    body: dict[str, object]
    if model.is_embedding:
        path, body = "/api/embed", {"model": model.tag, "input": WARM_UP_INPUT}
    else:
        path, body = "/api/generate", {"model": model.tag, "stream": False}
    timeout = aiohttp.ClientTimeout(total=WARM_TIMEOUT, sock_connect=CONNECT_TIMEOUT)
    started = time.monotonic()
    try:
        async with session.post(f"{base_url}{path}", json=body, timeout=timeout) as response:
            if response.status != 200:
                raise WarmError(
                    f"{path} answered HTTP {response.status}: {await _error_message(response)}"
                )
            await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise WarmError(f"{path} failed: {_describe(exc)}") from exc
    return time.monotonic() - started


PullObserver = Callable[[str, float, str], None]
"""Called once per pull with the model, its seconds and ``"success"`` or ``"failed"``."""


class ModelPreparer:
    """One pass over the configured models: list, pull the missing, warm.

    ``wait`` and ``sleep`` are tenacity's wait strategy and sleep function (inject fast ones in
    tests); ``shutdown`` ends retrying once set. :meth:`run` returns when every model has
    settled (present, ready or failed); cancelling it abandons the pass.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        state: InstanceState,
        models: Iterable[Model],
        *,
        concurrency: int,
        attempts: int,
        warm: bool,
        wait: wait_base | None = None,
        sleep: Sleep | None = None,
        shutdown: asyncio.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_pull: PullObserver | None = None,
    ) -> None:
        self._session = session
        self._base_url = base_url
        self._on_pull = on_pull
        self._state = state
        self._models: Sequence[Model] = tuple(models)
        self._concurrency = concurrency
        self._attempts = attempts
        self._warm = warm
        self._wait = wait if wait is not None else default_pull_wait()
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        self._shutdown = shutdown if shutdown is not None else asyncio.Event()
        self._clock = clock

    async def run(self) -> None:
        """Bring every model to ready (or present, without warm-up) or failed."""
        present = await self._list_present()
        pull_slots = asyncio.Semaphore(self._concurrency)
        warm_slot = asyncio.Lock()  # Ollama loads one model at a time anyway.
        await asyncio.gather(
            *(self._prepare(model, present, pull_slots, warm_slot) for model in self._models)
        )

    async def _list_present(self) -> set[str]:
        try:
            async for attempt in self._retrying(log_as="list models"):
                with attempt:
                    return await list_present(self._session, self._base_url)
        except (tenacity.RetryError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("could not list present models; pulling all", error=_describe(exc))
        return set()

    async def _prepare(
        self,
        model: Model,
        present: set[str],
        pull_slots: asyncio.Semaphore,
        warm_slot: asyncio.Lock,
    ) -> None:
        tag = model.tag
        try:
            if name_key(tag) in present:
                log.info("model present", model=tag)
            else:
                async with pull_slots:
                    await self._pull(tag)
            self._state.set_model(tag, ModelStatus.PRESENT)
            if self._warm:
                async with warm_slot:
                    self._state.set_model(tag, ModelStatus.LOADING)
                    seconds = await warm_model(self._session, self._base_url, model)
                log.info("model loaded", model=tag, kind=str(model.kind), seconds=round(seconds, 3))
                self._state.set_model(tag, ModelStatus.READY)
        except PullError as exc:
            log.error("model pull failed", model=tag, error=exc.message)
            self._state.set_model(tag, ModelStatus.FAILED, reason=f"pull failed: {exc.message}")
        except WarmError as exc:
            log.error("model load failed", model=tag, error=str(exc))
            self._state.set_model(tag, ModelStatus.FAILED, reason=f"load failed: {exc}")
        except Exception as exc:
            log.exception("model preparation failed", model=tag)
            self._state.set_model(tag, ModelStatus.FAILED, reason=f"unexpected error: {exc!r}")

    async def _pull(self, tag: str) -> None:
        self._state.set_model(tag, ModelStatus.PULLING, progress=0.0)
        progress = _Progress(tag, self._state, self._clock)
        log.info("pulling model", model=tag)
        started = self._clock()
        try:
            async for attempt in self._retrying(log_as="pull", model=tag):
                with attempt:
                    await pull_model(self._session, self._base_url, tag, progress.update)
        except (tenacity.RetryError, PullError) as exc:
            self._observe_pull(tag, started, "failed")
            if isinstance(exc, PullError):
                raise
            last = exc.last_attempt.exception()
            message = last.message if isinstance(last, PullError) else _describe(last)
            attempts = exc.last_attempt.attempt_number
            raise PullError(tag, f"{message} (gave up after {attempts} attempts)") from last
        seconds = self._observe_pull(tag, started, "success")
        log.info("model pulled", model=tag, seconds=round(seconds, 3), bytes=progress.total or None)

    def _observe_pull(self, tag: str, started: float, outcome: str) -> float:
        seconds = self._clock() - started
        if self._on_pull is not None:
            self._on_pull(tag, seconds, outcome)
        return seconds

    def _retrying(self, *, log_as: str, model: str | None = None) -> tenacity.AsyncRetrying:
        attempts = self._attempts

        def before_sleep(retry_state: tenacity.RetryCallState) -> None:
            outcome = retry_state.outcome
            error = outcome.exception() if outcome is not None else None
            delay = retry_state.next_action.sleep if retry_state.next_action else 0.0
            log.warning(
                f"{log_as} failed; retrying",
                model=model,
                attempt=retry_state.attempt_number,
                attempts=attempts,
                retry_in=round(delay, 2),
                error=error.message if isinstance(error, PullError) else _describe(error),
            )

        return tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(attempts) | _StopWhenSet(self._shutdown),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(
                (TransientPullError, aiohttp.ClientError, TimeoutError, ValueError)
            ),
            sleep=self._sleep,
            before_sleep=before_sleep,
        )


class _StopWhenSet(stop_base):
    """Stop retrying once an asyncio event (shutdown) is set."""

    def __init__(self, event: asyncio.Event) -> None:
        self._event = event

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self._event.is_set()


class _Progress:
    """Aggregates per-layer progress; logs it at a sane rate and feeds ``/readyz``."""

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


async def _error_message(response: aiohttp.ClientResponse) -> str:
    text = (await response.text(errors="replace")).strip()
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return f"HTTP {response.status}: {text[:200]}" if text else f"HTTP {response.status}"


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no error"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
