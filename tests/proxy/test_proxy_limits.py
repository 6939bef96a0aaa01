"""The concurrency guard: slots, the bounded FIFO queue, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from proxy.errors import QueueFullError
from proxy.limits import ConcurrencyGuard


async def test_admits_up_to_the_limit_without_waiting() -> None:
    guard = ConcurrencyGuard(2, 0)
    await guard.acquire()
    await guard.acquire()
    assert (guard.active, guard.queued) == (2, 0)
    with pytest.raises(QueueFullError) as caught:
        await guard.acquire()
    assert caught.value.status == 429
    assert caught.value.headers() == {"Retry-After": "1"}
    guard.release()
    await guard.acquire()
    assert guard.active == 2


async def test_waiters_are_served_in_order() -> None:
    guard = ConcurrencyGuard(1, 3)
    await guard.acquire()
    order: list[int] = []

    async def take(n: int) -> None:
        async with guard:
            order.append(n)
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(take(n)) for n in range(3)]
    await asyncio.sleep(0)
    assert guard.queued == 3
    with pytest.raises(QueueFullError):
        await guard.acquire()
    guard.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert (guard.active, guard.queued) == (0, 0)


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    guard = ConcurrencyGuard(1, 1)
    await guard.acquire()
    waiter = asyncio.create_task(guard.acquire())
    await asyncio.sleep(0)
    assert guard.queued == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert guard.queued == 0
    guard.release()
    assert guard.active == 0


async def test_a_slot_handed_to_a_cancelled_waiter_is_passed_on() -> None:
    guard = ConcurrencyGuard(1, 2)
    await guard.acquire()
    first = asyncio.create_task(guard.acquire())
    second = asyncio.create_task(guard.acquire())
    await asyncio.sleep(0)
    guard.release()  # hands the slot to ``first``...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert (guard.active, guard.queued) == (1, 0)
    guard.release()
    assert guard.active == 0
