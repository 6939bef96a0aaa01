"""The instance's readiness state machine, shared by the supervisor, the pulls and the app.

There is one owner of each fact: the supervisor sets Ollama's status, the pull workers set each
model's status, shutdown sets ``stopping``. The :class:`Phase` is derived from those facts, never
set directly, so it cannot disagree with them. Every change that moves the phase is logged as
``old -> new``, and every change wakes the waiters of :meth:`InstanceState.wait_for`.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from proxy.catalog import Model, ModelKind
from proxy.logs import get_logger

__all__ = ["InstanceState", "ModelState", "ModelStatus", "OllamaStatus", "Phase"]

log = get_logger("proxy.state")


class Phase(enum.StrEnum):
    """What ``/readyz`` reports for the whole instance."""

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


class ModelStatus(enum.StrEnum):
    """One configured model, from configuration to servable."""

    PENDING = "pending"
    PULLING = "pulling"
    PRESENT = "present"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(slots=True)
class ModelState:
    """What is known of one configured model."""

    tag: str
    kind: ModelKind
    status: ModelStatus = ModelStatus.PENDING
    reason: str | None = None
    progress: float | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": str(self.kind), "state": str(self.status)}
        if self.reason:
            data["reason"] = self.reason
        if self.progress is not None and self.status is ModelStatus.PULLING:
            data["progress"] = round(self.progress, 3)
        return data


class InstanceState:
    """Readiness of one instance: Ollama's status, each model's status, and the derived phase.

    ``preload`` says whether a model must be loaded into memory (``READY``) or only be present
    on disk (``PRESENT``) to count as servable. Not thread-safe: use from the event loop.
    """

    def __init__(self, models: Iterable[Model], *, preload: bool = True) -> None:
        self._models = {m.tag: ModelState(tag=m.tag, kind=m.kind) for m in models}
        self._preload = preload
        self._ollama = OllamaStatus.STARTING
        self._ollama_reason: str | None = None
        self._ollama_restarts = 0
        self._stopping = False
        self._phase = Phase.STARTING
        self._changed = asyncio.Event()
        self._listeners: list[Callable[[Phase, Phase], None]] = []

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
    def is_ready(self) -> bool:
        return self._phase is Phase.READY

    @property
    def models(self) -> dict[str, ModelState]:
        return self._models

    def add_listener(self, listener: Callable[[Phase, Phase], None]) -> None:
        """Call ``listener(old, new)`` on every phase change (for metrics)."""
        self._listeners.append(listener)

    def set_ollama(self, status: OllamaStatus, reason: str | None = None) -> None:
        """Record the Ollama process status (owned by the supervisor)."""
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
    ) -> None:
        """Record a model's status (owned by the pull and warm-up workers)."""
        model = self._models[tag]
        model.status, model.reason, model.progress = status, reason, progress
        self._update()

    def set_stopping(self) -> None:
        """Enter the terminal ``stopping`` phase."""
        self._stopping = True
        self._update()

    def model_servable(self, tag: str) -> bool:
        """Whether requests for ``tag`` can go to Ollama now."""
        model = self._models.get(tag)
        return (
            model is not None
            and self._ollama is OllamaStatus.UP
            and model.status in (ModelStatus.PRESENT, ModelStatus.LOADING, ModelStatus.READY)
        )

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

    def snapshot(self) -> dict[str, Any]:
        """The ``/readyz`` body."""
        ollama: dict[str, Any] = {"state": str(self._ollama), "restarts": self._ollama_restarts}
        if self._ollama_reason:
            ollama["reason"] = self._ollama_reason
        return {
            "status": str(self._phase),
            "ready": self.is_ready,
            "ollama": ollama,
            "models": {tag: m.as_dict() for tag, m in self._models.items()},
        }

    def _derive_phase(self) -> Phase:
        if self._stopping:
            return Phase.STOPPING
        statuses = {m.status for m in self._models.values()}
        settled = ModelStatus.READY if self._preload else ModelStatus.PRESENT
        if self._ollama is OllamaStatus.FAILED:
            return Phase.DEGRADED
        if self._ollama is not OllamaStatus.UP:
            was_serving = self._phase in (Phase.READY, Phase.DEGRADED)
            return Phase.DEGRADED if was_serving or self._ollama_restarts else Phase.STARTING
        if ModelStatus.FAILED in statuses:
            return Phase.DEGRADED
        if statuses <= {settled, ModelStatus.READY}:
            return Phase.READY
        return Phase.PULLING

    def _update(self) -> None:
        new = self._derive_phase()
        old, self._phase = self._phase, new
        if new is not old:
            log.info("phase changed", old=str(old), new=str(new), ollama=str(self._ollama))
            for listener in self._listeners:
                listener(old, new)
        self._changed.set()
