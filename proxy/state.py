"""The instance's readiness: one state machine, and the one contract everybody reads it by.

There is one owner of each fact: the supervisor sets Ollama's status, the pull workers set each
model's status, shutdown sets ``stopping``. The :class:`Phase` is derived from those facts, never
set directly, so it cannot disagree with them. Every change that moves the phase is logged as
``old -> new`` and wakes the waiters of :meth:`InstanceState.wait_for`. Ollama's status moves
only along :data:`OLLAMA_TRANSITIONS`; anything else is a bug and raises.

:class:`Readiness` is the contract: ``/readyz`` serves it, the ``proxy_ready`` metric, ``python
-m proxy check`` (the image's HEALTHCHECK) and the request processes' wait read it, with one
rule for all of them: an instance is *serving* when Ollama is up, no model is still on its way,
no model is configured as a kind it cannot serve, and at least one model can answer. A degraded
instance (a model failed, the others serve) therefore counts as ready; requests for the failed
model get 503 with its reason. A misconfigured model is the operator's mistake: it keeps the
instance from serving (and its readiness says it gave up) until the configuration is fixed.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import tenacity

from proxy.catalog import Model, ModelKind
from proxy.logs import get_logger

__all__ = [
    "InstanceState",
    "InvalidTransition",
    "ModelStatus",
    "NotServingError",
    "OllamaStatus",
    "Phase",
    "Readiness",
    "wait_until_serving",
]

_WAIT_FIRST_DELAY = 0.05
_WAIT_MAX_DELAY = 1.0
_WAIT_REPORT_EVERY = 10.0

log = get_logger(__name__)


class Phase(enum.StrEnum):
    """The whole instance, as ``/readyz`` names it."""

    STARTING = "starting"
    PULLING = "pulling"
    READY = "ready"
    DEGRADED = "degraded"
    STOPPING = "stopping"


class OllamaStatus(enum.StrEnum):
    """The supervised ``ollama serve`` process."""

    STARTING = "starting"
    UP = "up"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


OLLAMA_TRANSITIONS: Mapping[OllamaStatus, frozenset[OllamaStatus]] = {
    OllamaStatus.STARTING: frozenset(
        {OllamaStatus.STARTING, OllamaStatus.UP, OllamaStatus.FAILED, OllamaStatus.STOPPED}
    ),
    OllamaStatus.UP: frozenset({OllamaStatus.RESTARTING, OllamaStatus.STOPPED}),
    OllamaStatus.RESTARTING: frozenset(
        {OllamaStatus.RESTARTING, OllamaStatus.UP, OllamaStatus.FAILED, OllamaStatus.STOPPED}
    ),
    OllamaStatus.FAILED: frozenset(),
    OllamaStatus.STOPPED: frozenset(),
}
"""Where Ollama's status may go from each status (a status may repeat to update its reason)."""


class ModelStatus(enum.StrEnum):
    """One configured model, from configuration to servable."""

    PENDING = "pending"
    PULLING = "pulling"
    PRESENT = "present"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


_SERVABLE = frozenset({ModelStatus.PRESENT, ModelStatus.LOADING, ModelStatus.READY})


class InvalidTransition(RuntimeError):
    """A status change the state machine does not allow (a bug in its owner)."""


@dataclass(slots=True)
class ModelState:
    """What is known of one configured model."""

    tag: str
    kind: ModelKind
    status: ModelStatus = ModelStatus.PENDING
    reason: str | None = None
    progress: float | None = None
    misconfigured: bool = False
    dimensions: int | None = None
    """The size of an embedding model's embeddings, once Ollama said."""

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": str(self.kind), "state": str(self.status)}
        if self.reason:
            data["reason"] = self.reason
        if self.progress is not None and self.status is ModelStatus.PULLING:
            data["progress"] = round(self.progress, 3)
        return data


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether an instance takes requests, and why not; the body of ``/readyz``.

    Attributes:
        phase: the derived phase.
        serving: requests are taken (the one rule; see the module doc).
        gave_up: Ollama failed for good, or a model is configured as a kind it cannot serve:
            waiting will not make the instance serve.
        reason: why it is not serving, or what is degraded; None when all is well.
        details: Ollama's and each model's state, as ``/readyz`` shows them.
    """

    phase: Phase
    serving: bool
    gave_up: bool
    reason: str | None
    details: Mapping[str, Any]

    def as_json(self) -> dict[str, Any]:
        """The ``/readyz`` document."""
        return {
            "status": str(self.phase),
            "ready": self.serving,
            "gave_up": self.gave_up,
            "reason": self.reason,
            **self.details,
        }

    @classmethod
    def from_json(cls, body: object) -> Readiness:
        """Read a ``/readyz`` document back.

        Raises:
            ValueError: it is not one.
        """
        if not isinstance(body, dict):
            raise ValueError("the readiness document is not a JSON object")
        try:
            phase = Phase(body["status"])
        except (KeyError, ValueError):
            raise ValueError("the readiness document has no known status") from None
        serving, gave_up, reason = body.get("ready"), body.get("gave_up"), body.get("reason")
        if not isinstance(serving, bool) or not isinstance(gave_up, bool):
            raise ValueError("the readiness document does not say whether it is ready")
        details = {key: body[key] for key in ("ollama", "models") if key in body}
        return cls(phase, serving, gave_up, reason if isinstance(reason, str) else None, details)

    def summary(self) -> str:
        """One line for people: ``ready``, or whether it serves, its phase and the reason."""
        if self.serving and self.reason is None:
            return "ready"
        head = f"{'ready' if self.serving else 'not ready'} ({self.phase})"
        return f"{head}: {self.reason}" if self.reason else head


class InstanceState:
    """Readiness of one instance: Ollama's status, each model's status, and the derived phase.

    ``preload`` says whether a model must be loaded into memory (``READY``) or only be present
    on disk (``PRESENT``) to count as settled. Not thread-safe: use from the event loop.
    """

    def __init__(self, models: Iterable[Model], *, preload: bool = True) -> None:
        self._models = {m.tag: ModelState(tag=m.tag, kind=m.kind) for m in models}
        self._settled = ModelStatus.READY if preload else ModelStatus.PRESENT
        self._ollama = OllamaStatus.STARTING
        self._ollama_reason: str | None = None
        self._ollama_restarts = 0
        self._stopping = False
        self._phase = Phase.STARTING
        self._changed = asyncio.Event()

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def ollama_status(self) -> OllamaStatus:
        return self._ollama

    @property
    def ollama_restarts(self) -> int:
        return self._ollama_restarts

    @property
    def models(self) -> Mapping[str, ModelState]:
        return self._models

    @property
    def serving(self) -> bool:
        """Whether the instance takes requests (:class:`Readiness` ``serving``)."""
        if self._stopping or self._ollama is not OllamaStatus.UP or self._misconfigured():
            return False
        statuses = [m.status for m in self._models.values()]
        settled = {self._settled, ModelStatus.READY, ModelStatus.FAILED}
        if not all(status in settled for status in statuses):
            return False
        return not statuses or any(status in _SERVABLE for status in statuses)

    def set_ollama(self, status: OllamaStatus, reason: str | None = None) -> None:
        """Record the Ollama process status (owned by the supervisor).

        Raises:
            InvalidTransition: ``status`` cannot follow the current one.
        """
        if status not in OLLAMA_TRANSITIONS[self._ollama]:
            raise InvalidTransition(f"Ollama's status cannot go from {self._ollama} to {status}")
        if status is OllamaStatus.RESTARTING and self._ollama is not OllamaStatus.RESTARTING:
            self._ollama_restarts += 1
        self._ollama, self._ollama_reason = status, reason
        self._update()

    def set_model(
        self,
        tag: str,
        status: ModelStatus,
        reason: str | None = None,
        progress: float | None = None,
        *,
        misconfigured: bool = False,
        dimensions: int | None = None,
    ) -> None:
        """Record a model's status (owned by the pull and warm-up workers).

        A model ``misconfigured`` (configured as a kind it cannot serve) keeps the whole instance
        from serving until the configuration is fixed: it is an operator's mistake, not a fault.
        """
        model = self._models[tag]
        model.status, model.reason, model.progress = status, reason, progress
        model.misconfigured = misconfigured
        model.dimensions = dimensions if dimensions is not None else model.dimensions
        self._update()

    def set_stopping(self) -> None:
        """Enter the terminal ``stopping`` phase."""
        self._stopping = True
        self._update()

    def model_servable(self, tag: str) -> bool:
        """Whether requests for ``tag`` can go to Ollama now."""
        model = self._models.get(tag)
        return model is not None and self._ollama is OllamaStatus.UP and model.status in _SERVABLE

    def unavailable_reason(self, tag: str) -> str | None:
        """Why requests for ``tag`` cannot be served now, or None when they can."""
        if self._stopping:
            return "the server is shutting down"
        if self._ollama is not OllamaStatus.UP:
            detail = f": {self._ollama_reason}" if self._ollama_reason else ""
            return f"the Ollama server is {self._ollama}{detail}"
        model = self._models.get(tag)
        if model is None or self.model_servable(tag):
            return None
        if model.status is ModelStatus.FAILED:
            return f"model {tag!r} failed to load: {model.reason}"
        return f"model {tag!r} is not available yet ({model.status})"

    async def wait_for(self, predicate: Callable[[InstanceState], bool]) -> None:
        """Block until ``predicate(self)`` holds; re-checked after every change."""
        while not predicate(self):
            self._changed.clear()
            await self._changed.wait()

    def readiness(self) -> Readiness:
        """The readiness contract as of now."""
        ollama: dict[str, Any] = {"state": str(self._ollama), "restarts": self._ollama_restarts}
        if self._ollama_reason:
            ollama["reason"] = self._ollama_reason
        return Readiness(
            phase=self._phase,
            serving=self.serving,
            gave_up=self._ollama is OllamaStatus.FAILED or self._misconfigured(),
            reason=self._reason(),
            details={
                "ollama": ollama,
                "models": {tag: m.as_json() for tag, m in self._models.items()},
            },
        )

    def _misconfigured(self) -> bool:
        return any(m.misconfigured for m in self._models.values())

    def _reason(self) -> str | None:
        if self._stopping:
            return "the server is shutting down"
        if self._ollama is not OllamaStatus.UP:
            detail = f": {self._ollama_reason}" if self._ollama_reason else ""
            return f"Ollama is {self._ollama}{detail}"
        parts = []
        for model in self._models.values():
            if model.status is ModelStatus.FAILED:
                parts.append(f"{model.tag} failed: {model.reason}")
            elif model.status not in (self._settled, ModelStatus.READY):
                progress = f" {model.progress:.0%}" if model.progress else ""
                parts.append(f"{model.tag} {model.status}{progress}")
        return "; ".join(parts) or None

    def _derive_phase(self) -> Phase:
        if self._stopping:
            return Phase.STOPPING
        if self._ollama is OllamaStatus.FAILED:
            return Phase.DEGRADED
        if self._ollama is not OllamaStatus.UP:
            was_serving = self._phase in (Phase.READY, Phase.DEGRADED)
            return Phase.DEGRADED if was_serving or self._ollama_restarts else Phase.STARTING
        statuses = {m.status for m in self._models.values()}
        if ModelStatus.FAILED in statuses:
            return Phase.DEGRADED
        if statuses <= {self._settled, ModelStatus.READY}:
            return Phase.READY
        return Phase.PULLING

    def _update(self) -> None:
        new = self._derive_phase()
        old, self._phase = self._phase, new
        if new is not old:
            log.info("phase changed", old=str(old), new=str(new), ollama=str(self._ollama))
        self._changed.set()


class NotServingError(Exception):
    """A wait for readiness ended without it: ``gave_up`` (Ollama failed for good) or timed out.

    ``last`` says what the instance last reported (or why it could not be asked).
    """

    def __init__(self, last: str, *, gave_up: bool) -> None:
        super().__init__(last)
        self.last = last
        self.gave_up = gave_up


async def wait_until_serving(
    probe: Callable[[], Awaitable[Readiness]],
    *,
    within: float,
    unreachable: tuple[type[BaseException], ...] = (OSError, TimeoutError, ValueError),
) -> Readiness:
    """Ask ``probe`` with a capped backoff until the instance serves; return that readiness.

    A probe that raises one of ``unreachable`` counts as "not yet"; anything else it raises
    ends the wait. Progress is logged every ten seconds.

    Raises:
        NotServingError: Ollama failed for good, or ``within`` seconds passed.
    """
    last = "no answer yet"
    next_report = _WAIT_REPORT_EVERY

    def note(state: tenacity.RetryCallState) -> None:
        nonlocal last, next_report
        assert state.outcome is not None
        error = state.outcome.exception()
        last = f"not answering ({error})" if error else state.outcome.result().summary()
        if (state.seconds_since_start or 0.0) >= next_report:
            log.info("still waiting for readiness", waited_s=next_report, status=last)
            next_report += _WAIT_REPORT_EVERY

    async def ask() -> Readiness:
        readiness = await probe()
        if readiness.gave_up:
            raise NotServingError(readiness.reason or readiness.summary(), gave_up=True)
        return readiness

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_before_delay(within),
        wait=tenacity.wait_exponential(multiplier=_WAIT_FIRST_DELAY, max=_WAIT_MAX_DELAY),
        retry=tenacity.retry_if_result(lambda readiness: not readiness.serving)
        | tenacity.retry_if_exception_type(unreachable),
        before_sleep=note,
    )
    try:
        readiness: Readiness = await retrying(ask)
    except tenacity.RetryError:
        raise NotServingError(last, gave_up=False) from None
    return readiness
