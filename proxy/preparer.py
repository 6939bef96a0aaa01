"""Make the configured models servable: list what is present, pull what is missing, warm them.

Each model moves through :class:`~proxy.state.InstanceState` as
``pending → pulling(progress) → present → loading → ready``, or ends ``failed`` with the
reason. One model failing never stops the others. Pulls (:mod:`proxy.pulls`) that may pass are
retried with exponential backoff and jitter, ``PULL_RETRIES`` attempts in all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

import aiohttp
import tenacity
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from proxy.catalog import Model, ModelKind, name_key
from proxy.logs import get_logger
from proxy.ollama import describe_error, get_field
from proxy.pulls import (
    CONNECT_TIMEOUT,
    PullError,
    PullProgress,
    TransientPullError,
    default_pull_wait,
    error_message,
    pull_model,
)
from proxy.state import InstanceState, ModelStatus

__all__ = [
    "MisconfiguredError",
    "ModelPreparer",
    "PullObserver",
    "WarmError",
    "check_capabilities",
    "list_present",
    "warm_model",
]

LIST_TIMEOUT = 30.0
"""``GET /api/tags`` may take this long (seconds)."""

WARM_TIMEOUT = 1800.0
"""Loading one model may take this long (seconds)."""

WARM_UP_INPUT = "warm-up"
"""The text embedded to load an embedding model."""

log = get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]


class WarmError(Exception):
    """Loading a model into memory failed."""


async def list_present(session: aiohttp.ClientSession, base_url: str) -> set[str]:
    """The :func:`~proxy.catalog.name_key` of every model Ollama has on disk (``/api/tags``).

    Raises:
        aiohttp.ClientError, TimeoutError, ValueError: Ollama did not answer sensibly.
    """
    models = await get_field(session, base_url, "/api/tags", "models", LIST_TIMEOUT)
    if not isinstance(models, list):
        raise ValueError("GET /api/tags answered without a model list")
    present: set[str] = set()
    for entry in models:
        if isinstance(entry, dict):
            for field in ("name", "model"):
                if isinstance(entry.get(field), str):
                    present.add(name_key(entry[field]))
    return present


class MisconfiguredError(Exception):
    """A model is configured as a kind that Ollama says it cannot serve."""


_NEEDED_CAPABILITY = {ModelKind.CHAT: "completion", ModelKind.EMBEDDING: "embedding"}
_KIND_VARIABLE = {
    ModelKind.CHAT: "OLLAMA_CHAT_MODELS",
    ModelKind.EMBEDDING: "OLLAMA_EMBEDDING_MODELS",
}


async def check_capabilities(
    session: aiohttp.ClientSession, base_url: str, model: Model
) -> int | None:
    """Ask Ollama (``/api/show``) what ``model`` can do and check it fits the configured kind;
    return the size of an embedding model's embeddings, when Ollama says.

    An Ollama that does not report capabilities (before 0.6) is taken at its word.

    Raises:
        MisconfiguredError: a chat model that cannot generate, or an embedding model that
            cannot embed.
        aiohttp.ClientError, TimeoutError, ValueError: Ollama did not answer sensibly.
    """
    timeout = aiohttp.ClientTimeout(total=LIST_TIMEOUT)
    async with session.post(
        f"{base_url}/api/show", json={"model": model.tag}, timeout=timeout
    ) as response:
        if response.status != 200:
            raise ValueError(f"POST /api/show answered HTTP {response.status}")
        details = await response.json(content_type=None)
    details = details if isinstance(details, dict) else {}
    capabilities = details.get("capabilities")
    needed = _NEEDED_CAPABILITY[model.kind]
    if isinstance(capabilities, list) and needed not in capabilities:
        can = ", ".join(map(str, capabilities)) or "nothing"
        raise MisconfiguredError(
            f"{model.configured_as} is listed in {_KIND_VARIABLE[model.kind]}, but Ollama says "
            f"it cannot do {needed} (it can do: {can}); list it under the other kind"
        )
    info = details.get("model_info")
    if not model.is_embedding or not isinstance(info, dict):
        return None
    sizes = [v for k, v in info.items() if k.endswith(".embedding_length") and isinstance(v, int)]
    return sizes[0] if sizes else None


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
                    f"{path} answered HTTP {response.status}: {await error_message(response)}"
                )
            await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise WarmError(f"{path} failed: {describe_error(exc)}") from exc
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
            log.warning("could not list present models; pulling all", error=describe_error(exc))
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
            size = await check_capabilities(self._session, self._base_url, model)
            self._state.set_model(tag, ModelStatus.PRESENT, dimensions=size)
            if self._warm:
                async with warm_slot:
                    self._state.set_model(tag, ModelStatus.LOADING)
                    seconds = await warm_model(self._session, self._base_url, model)
                log.info("model loaded", model=tag, kind=str(model.kind), seconds=round(seconds, 3))
                self._state.set_model(tag, ModelStatus.READY)
        except PullError as exc:
            log.error("model pull failed", model=tag, error=exc.message)
            self._state.set_model(tag, ModelStatus.FAILED, reason=f"pull failed: {exc.message}")
        except MisconfiguredError as exc:
            log.error("model misconfigured", model=tag, error=str(exc))
            self._state.set_model(tag, ModelStatus.FAILED, reason=str(exc), misconfigured=True)
        except WarmError as exc:
            log.error("model load failed", model=tag, error=str(exc))
            self._state.set_model(tag, ModelStatus.FAILED, reason=f"load failed: {exc}")
        except Exception as exc:
            log.exception("model preparation failed", model=tag)
            self._state.set_model(tag, ModelStatus.FAILED, reason=f"unexpected error: {exc!r}")

    async def _pull(self, tag: str) -> None:
        self._state.set_model(tag, ModelStatus.PULLING, progress=0.0)
        progress = PullProgress(tag, self._state, self._clock)
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
            message = last.message if isinstance(last, PullError) else describe_error(last)
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
                error=error.message if isinstance(error, PullError) else describe_error(error),
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
