"""Which models are "loaded", and until when: the simulator's stand-in for Ollama's scheduler."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from .store import StoredModel

__all__ = ["Loaded", "Scheduler"]


@dataclass(slots=True)
class Loaded:
    """A loaded model; ``expires_at`` is a Unix time (``inf`` = forever)."""

    model: StoredModel
    expires_at: float
    in_use: int = 0


class Scheduler:
    """Loads models on first use (taking ``load_delay``) and expires them after keep-alive."""

    def __init__(self, default_keep_alive: float, load_delay: float) -> None:
        self._default = default_keep_alive
        self._load_delay = load_delay
        self._loaded: dict[str, Loaded] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def acquire(self, model: StoredModel, keep_alive: float | None) -> int:
        """Mark ``model`` in use, loading it if needed; returns the load time in nanoseconds."""
        start = time.perf_counter_ns()
        key = model.name.key
        entry = self._current(key)
        if entry is None:
            lock = self._locks.setdefault(key, asyncio.Lock())
            async with lock:
                entry = self._current(key)
                if entry is None:
                    if self._load_delay > 0:
                        await asyncio.sleep(self._load_delay)
                    entry = self._loaded[key] = Loaded(model, time.time())
        entry.in_use += 1
        entry.expires_at = time.time() + self._keep_alive(keep_alive)
        return max(time.perf_counter_ns() - start, 1)

    def release(self, model: StoredModel, keep_alive: float | None) -> None:
        """End one use of ``model``; the keep-alive clock starts now (0 unloads once idle)."""
        key = model.name.key
        entry = self._loaded.get(key)
        if entry is None:
            return
        entry.in_use = max(entry.in_use - 1, 0)
        seconds = self._keep_alive(keep_alive)
        entry.expires_at = time.time() + seconds
        if seconds <= 0 and entry.in_use == 0:
            del self._loaded[key]

    def unload(self, model: StoredModel) -> None:
        """Drop ``model`` now (``keep_alive: 0`` with an empty prompt, or a delete)."""
        self._loaded.pop(model.name.key, None)

    def running(self) -> list[Loaded]:
        """Loaded models, longest remaining keep-alive first (as ``/api/ps`` lists them)."""
        now = time.time()
        for key in [k for k, e in self._loaded.items() if e.in_use == 0 and e.expires_at <= now]:
            del self._loaded[key]
        return sorted(self._loaded.values(), key=lambda e: e.expires_at, reverse=True)

    def _current(self, key: str) -> Loaded | None:
        entry = self._loaded.get(key)
        if entry is not None and entry.in_use == 0 and entry.expires_at <= time.time():
            del self._loaded[key]
            return None
        return entry

    def _keep_alive(self, requested: float | None) -> float:
        return self._default if requested is None else requested
