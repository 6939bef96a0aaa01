"""What the proxy's scheduler costs per request, beside the cheapest thing it could be.

The scheduler (:class:`proxy.admission.Admission` and a key's :class:`RateWindow`) sits on
every model request. Its cost is measured in-process, where it is not lost in HTTP noise, side by
side with a plain :class:`asyncio.Semaphore` of the same budget doing the same work in the same
event loop: the difference is what the per-model lanes, the keys' turns and the rate windows add.

- *idle*: one request at a time (the usual case; nothing waits).
- *contended*: many tasks from several keys compete for a budget of two, so every request
  queues and is dispatched by the keys' turns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from proxy.admission import Admission, RateWindow

__all__ = ["AdmissionCost", "measure"]

_MODEL = "bench:latest"
_KEYS = tuple(f"key-{i}" for i in range(8))
_BUDGET = 2
_TASKS_PER_KEY = 4


@dataclass(frozen=True, slots=True)
class AdmissionCost:
    """Microseconds per request, each measured against a semaphore in the same round."""

    idle_us: float
    contended_us: float


def measure(requests: int) -> AdmissionCost:
    """One round: ``requests`` requests through each side, idle then contended."""
    return asyncio.run(_measure(requests))


async def _measure(requests: int) -> AdmissionCost:
    idle = await _added(requests, tasks_per_key=0)
    contended = await _added(requests, tasks_per_key=_TASKS_PER_KEY)
    return AdmissionCost(idle_us=idle, contended_us=contended)


async def _added(requests: int, *, tasks_per_key: int) -> float:
    """Scheduler minus semaphore, µs per request (best of three of each, alternated)."""
    scheduler: list[float] = []
    semaphore: list[float] = []
    for _ in range(3):
        scheduler.append(await _timed(_scheduler_request(), requests, tasks_per_key))
        semaphore.append(await _timed(_semaphore_request(), requests, tasks_per_key))
    return (min(scheduler) - min(semaphore)) * 1e6


Request = Callable[[str], Awaitable[None]]


def _scheduler_request() -> Request:
    admission = Admission(
        {_MODEL: _BUDGET},
        max_queue=len(_KEYS) * _TASKS_PER_KEY,
        weights={key: 1 + i % 3 for i, key in enumerate(_KEYS)},
        key_caps={key: _BUDGET for key in _KEYS},
    )
    # Limits far above what a round sends: the windows count, they never refuse.
    windows = {key: RateWindow(10**9, 10**12) for key in _KEYS}

    async def request(key: str) -> None:
        window = windows[key]
        window.admit(key)
        async with admission.slot(_MODEL, key):
            await asyncio.sleep(0)
        window.spent(20)

    return request


def _semaphore_request() -> Request:
    semaphore = asyncio.Semaphore(_BUDGET)

    async def request(key: str) -> None:
        async with semaphore:
            await asyncio.sleep(0)

    return request


async def _timed(request: Request, requests: int, tasks_per_key: int) -> float:
    """Seconds per request, ``requests`` of them in one task or spread over tasks of every key."""
    if tasks_per_key == 0:
        start = time.perf_counter()
        for i in range(requests):
            await request(_KEYS[i % len(_KEYS)])
        return (time.perf_counter() - start) / requests
    tasks = len(_KEYS) * tasks_per_key
    each = requests // tasks

    async def client(key: str) -> None:
        for _ in range(each):
            await request(key)

    start = time.perf_counter()
    await asyncio.gather(*(client(_KEYS[t % len(_KEYS)]) for t in range(tasks)))
    return (time.perf_counter() - start) / (each * tasks)
