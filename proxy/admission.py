"""Who may send a request to Ollama now: a budget and a queue per model, keys taking turns.

Each model has a lane: at most its budget of requests in Ollama at once, and up to ``max_queue``
waiting. A free slot of a model goes to that model's waiters, so long chat streams never hold
up embeddings or another model, and one model's requests reach Ollama together rather than
interleaved with others'. Among the waiters of a lane the keys take turns (weighted round
robin: a key of weight *w* is served up to *w* times per turn); within a key, first come first
served. A key may also have a cap on its requests in flight across all models; a key at its cap
waits without holding up the others.

A request that must wait is told how long, roughly: when a queue is full the refusal carries a
``Retry-After`` estimated from the lane's recent service times. Not thread-safe: use from the
event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from proxy.errors import QueueFullError

__all__ = ["META_CONCURRENCY", "META_LANE", "Admission", "Lane", "RateWindow"]

META_LANE = "metadata"
"""The lane of model info, listings, ps and version (no model tag is spelled so)."""

META_CONCURRENCY = 8
"""Requests of the metadata lane in Ollama at once."""

_SERVICE_SMOOTHING = 0.2
"""Weight of the newest service time in a lane's running estimate."""
_DEFAULT_SERVICE = 1.0
"""A lane's service-time estimate before it has served anything (seconds)."""


@dataclass(eq=False)
class _Waiter:
    key: str
    future: asyncio.Future[None]


@dataclass(eq=False)
class Lane:
    """One model's budget and queue."""

    model: str
    limit: int
    active: int = 0
    queued: int = 0
    service_seconds: float = _DEFAULT_SERVICE
    _queues: dict[str, deque[_Waiter]] = field(default_factory=dict)
    _turns: deque[str] = field(default_factory=deque)
    _served_in_turn: int = 0

    def retry_after(self) -> int:
        """Seconds until a place is likely free, from recent service times."""
        waves = (self.queued + 1) / max(self.limit, 1)
        return max(1, math.ceil(self.service_seconds * waves))


class Admission:
    """Per-model lanes with fair turns between keys; see the module doc.

    Args:
        budgets: each model's budget (Ollama tag → requests in flight at once).
        max_queue: requests that may wait in one lane; beyond it :class:`QueueFullError`.
        weights: each key's weight in the turns (default 1).
        key_caps: each key's cap on its requests in flight across all models (default none).
    """

    def __init__(
        self,
        budgets: Mapping[str, int],
        *,
        max_queue: int,
        weights: Mapping[str, int] | None = None,
        key_caps: Mapping[str, int] | None = None,
    ) -> None:
        self._lanes = {model: Lane(model, limit) for model, limit in budgets.items()}
        self._max_queue = max_queue
        self._weights = dict(weights or {})
        self._caps = dict(key_caps or {})
        self._key_active: dict[str, int] = {}

    @property
    def lanes(self) -> Mapping[str, Lane]:
        return self._lanes

    @property
    def active(self) -> int:
        """Requests in Ollama now, all models."""
        return sum(lane.active for lane in self._lanes.values())

    @property
    def queued(self) -> int:
        """Requests waiting now, all models."""
        return sum(lane.queued for lane in self._lanes.values())

    @contextlib.asynccontextmanager
    async def slot(self, model: str, key: str) -> AsyncIterator[float]:
        """Hold a slot of ``model``'s lane for ``key``; yields how long the request waited.

        Raises:
            QueueFullError: the lane's queue is full (with a ``Retry-After`` estimate).
        """
        lane = self._lanes[model]
        asked = time.monotonic()
        await self._acquire(lane, key)
        granted = time.monotonic()
        try:
            yield granted - asked
        finally:
            served = time.monotonic() - granted
            lane.service_seconds += _SERVICE_SMOOTHING * (served - lane.service_seconds)
            self._release(lane, key)

    async def _acquire(self, lane: Lane, key: str) -> None:
        if lane.queued == 0 and lane.active < lane.limit and self._under_cap(key):
            self._take(lane, key)
            return
        if lane.queued >= self._max_queue:
            raise QueueFullError(
                f"the server is busy: {lane.active} requests for {lane.model} in progress and "
                f"{lane.queued} waiting; retry later",
                retry_after=lane.retry_after(),
            )
        waiter = _Waiter(key, asyncio.get_running_loop().create_future())
        queue = lane._queues.get(key)
        if queue is None:
            queue = lane._queues[key] = deque()
            lane._turns.append(key)
        queue.append(waiter)
        lane.queued += 1
        self._dispatch(lane)  # a slot may be free while the keys ahead are at their caps
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self._release(lane, key)  # the slot came just as the client went away
            else:
                self._forget(lane, waiter)
            raise

    def _release(self, lane: Lane, key: str) -> None:
        lane.active -= 1
        self._key_active[key] -= 1
        self._dispatch(lane)
        if key in self._caps:  # the key may now be served where it waits in other lanes
            for other in self._lanes.values():
                if other is not lane and key in other._queues:
                    self._dispatch(other)

    def _dispatch(self, lane: Lane) -> None:
        """Give the lane's free slots to its waiters, keys taking turns."""
        skipped = 0
        while lane.active < lane.limit and lane._turns and skipped < len(lane._turns):
            key = lane._turns[0]
            if not self._under_cap(key):
                lane._turns.rotate(-1)
                lane._served_in_turn = 0
                skipped += 1
                continue
            queue = lane._queues[key]
            waiter = queue.popleft()
            lane.queued -= 1
            self._take(lane, key)
            waiter.future.set_result(None)
            lane._served_in_turn += 1
            skipped = 0
            if not queue:
                del lane._queues[key]
                lane._turns.popleft()
                lane._served_in_turn = 0
            elif lane._served_in_turn >= self._weights.get(key, 1):
                lane._turns.rotate(-1)
                lane._served_in_turn = 0

    def _forget(self, lane: Lane, waiter: _Waiter) -> None:
        queue = lane._queues.get(waiter.key)
        if queue is None or waiter not in queue:
            return
        queue.remove(waiter)
        lane.queued -= 1
        if not queue:
            del lane._queues[waiter.key]
            lane._turns.remove(waiter.key)

    def _take(self, lane: Lane, key: str) -> None:
        lane.active += 1
        self._key_active[key] = self._key_active.get(key, 0) + 1

    def _under_cap(self, key: str) -> bool:
        cap = self._caps.get(key)
        return cap is None or self._key_active.get(key, 0) < cap


class RateWindow:
    """A key's requests and tokens in the last minute, against its per-minute limits."""

    __slots__ = ("_requests", "_rpm", "_tokens", "_tokens_in_window", "_tpm")

    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self._rpm, self._tpm = rpm, tpm
        self._requests: deque[float] = deque()
        self._tokens: deque[tuple[float, int]] = deque()
        self._tokens_in_window = 0  # the sum over _tokens, kept so a request costs O(1)

    def admit(self, key: str) -> None:
        """Count one request now.

        Raises:
            QueueFullError: the key used its requests or tokens of the last minute (429, with a
                ``Retry-After`` until enough of them fall out of the window).
        """
        now = time.monotonic()
        while self._requests and now - self._requests[0] >= 60.0:
            self._requests.popleft()
        while self._tokens and now - self._tokens[0][0] >= 60.0:
            self._tokens_in_window -= self._tokens.popleft()[1]
        if self._rpm is not None and len(self._requests) >= self._rpm:
            wait = 60.0 - (now - self._requests[0])
            raise QueueFullError(
                f"key {key!r} may send {self._rpm} requests a minute; retry later",
                retry_after=max(1, math.ceil(wait)),
            )
        if self._tpm is not None and self._tokens_in_window >= self._tpm:
            wait = 60.0 - (now - self._tokens[0][0])
            raise QueueFullError(
                f"key {key!r} may use {self._tpm} tokens a minute; retry later",
                retry_after=max(1, math.ceil(wait)),
            )
        if self._rpm is not None:
            self._requests.append(now)

    def spent(self, tokens: int) -> None:
        """Count ``tokens`` a finished request used."""
        if self._tpm is not None and tokens > 0:
            self._tokens.append((time.monotonic(), tokens))
            self._tokens_in_window += tokens
