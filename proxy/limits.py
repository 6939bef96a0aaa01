"""Concurrency guard: at most N requests forwarded at once, a bounded FIFO queue for the rest."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from proxy.errors import QueueFullError

__all__ = ["ConcurrencyGuard"]


class ConcurrencyGuard:
    """Admit at most ``limit`` holders at once; up to ``max_queue`` more wait in FIFO order.

    Use as ``async with guard: ...``. Entering never blocks while a slot is free; with every slot
    taken it waits in the queue, and with the queue full it raises :class:`QueueFullError` at
    once. A waiter that is cancelled (its client went away) leaves the queue; a slot handed to a
    waiter that is cancelled at the same moment is passed on, never lost. Not thread-safe.
    """

    def __init__(self, limit: int, max_queue: int, *, retry_after: int = 1) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._max_queue = max_queue
        self._retry_after = retry_after
        self._active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def active(self) -> int:
        """Holders now (requests being forwarded)."""
        return self._active

    @property
    def queued(self) -> int:
        """Waiters now."""
        return len(self._waiters)

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if need be.

        Raises:
            QueueFullError: every slot is taken and the queue is full.
        """
        if self._active < self._limit and not self._waiters:
            self._active += 1
            return
        if len(self._waiters) >= self._max_queue:
            raise QueueFullError(
                f"the server is busy: {self._active} requests in progress and "
                f"{len(self._waiters)} waiting; retry later",
                retry_after=self._retry_after,
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over just as we were cancelled
            else:
                with contextlib.suppress(ValueError):  # release() may have dropped it already
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give the slot back: to the first live waiter, or to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; ``active`` is unchanged
                return
        self._active -= 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *_exc: object) -> None:
        self.release()
