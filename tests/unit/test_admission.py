"""Admission: a lane per model, fair turns between keys, key caps, cancellation, rates."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from proxy.admission import Admission, RateWindow
from proxy.errors import QueueFullError

HELD = 0.05
"""How long a test's request holds its slot (seconds)."""


async def _hold(admission: Admission, model: str, key: str, order: list[str], tag: str) -> None:
    async with admission.slot(model, key):
        order.append(tag)
        await asyncio.sleep(HELD)


def _requests(
    admission: Admission, key: str, order: list[str], count: int
) -> list[asyncio.Task[None]]:
    """``count`` requests of ``key`` for model ``m``, tagged with the key's initial and a number."""
    return [
        asyncio.create_task(_hold(admission, "m", key, order, f"{key[0]}{i}")) for i in range(count)
    ]


@contextlib.asynccontextmanager
async def _occupied(admission: Admission, model: str) -> AsyncIterator[asyncio.Event]:
    """Hold every slot of ``model`` until the yielded event is set."""
    done = asyncio.Event()
    started = asyncio.Event()
    limit = admission.lanes[model].limit

    async def hold() -> None:
        async with admission.slot(model, "holder"):
            if admission.lanes[model].active == limit:
                started.set()
            await done.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(limit)]
    await started.wait()
    try:
        yield done
    finally:
        done.set()
        await asyncio.gather(*tasks)


async def test_each_model_has_its_own_budget_and_queue() -> None:
    admission = Admission({"chat": 1, "embed": 2}, max_queue=1)
    async with _occupied(admission, "chat"):
        # The chat lane is full and its queue takes one more; embeddings are not held up.
        async with admission.slot("embed", "k"), admission.slot("embed", "k"):
            assert admission.lanes["embed"].active == 2
        waiting = asyncio.create_task(_hold(admission, "chat", "k", [], "w"))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError) as full:
            async with admission.slot("chat", "k"):
                pass
        assert full.value.status == 429
        assert int(full.value.headers()["Retry-After"]) >= 1
    await waiting
    assert (admission.active, admission.queued) == (0, 0)


async def test_keys_take_turns_and_each_key_keeps_its_order() -> None:
    admission = Admission({"m": 1}, max_queue=100)
    order: list[str] = []
    async with _occupied(admission, "m"):
        tasks = [
            asyncio.create_task(_hold(admission, "m", "busy", order, f"b{i}")) for i in range(6)
        ]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(_hold(admission, "m", "quiet", order, "q0")))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    # The quiet key is served second, not after the busy key's six.
    assert order == ["b0", "q0", "b1", "b2", "b3", "b4", "b5"]


async def test_a_weight_buys_more_turns() -> None:
    admission = Admission({"m": 1}, max_queue=100, weights={"heavy": 2})
    order: list[str] = []
    async with _occupied(admission, "m"):
        tasks = [
            asyncio.create_task(_hold(admission, "m", "heavy", order, f"h{i}")) for i in range(4)
        ]
        tasks += [
            asyncio.create_task(_hold(admission, "m", "light", order, f"l{i}")) for i in range(2)
        ]
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["h0", "h1", "l0", "h2", "h3", "l1"]


async def test_a_key_at_its_cap_waits_without_holding_up_others() -> None:
    admission = Admission({"a": 2, "b": 2}, max_queue=10, key_caps={"capped": 1})
    order: list[str] = []
    first = asyncio.create_task(_hold(admission, "a", "capped", order, "c0"))
    await asyncio.sleep(0)
    second = asyncio.create_task(_hold(admission, "b", "capped", order, "c1"))
    other = asyncio.create_task(_hold(admission, "b", "free", order, "f0"))
    await asyncio.sleep(0)
    assert order == ["c0", "f0"], "the capped key's second request waits; another key does not"
    await asyncio.gather(first, second, other)
    assert order == ["c0", "f0", "c1"]


async def test_a_cancelled_waiter_leaves_and_a_slot_it_got_is_passed_on() -> None:
    admission = Admission({"m": 1}, max_queue=2)
    async with _occupied(admission, "m"):
        gone = asyncio.create_task(_hold(admission, "m", "k", [], "gone"))
        kept: list[str] = []
        stays = asyncio.create_task(_hold(admission, "m", "k", kept, "stays"))
        await asyncio.sleep(0)
        assert admission.lanes["m"].queued == 2
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert admission.lanes["m"].queued == 1
    await asyncio.wait_for(stays, 1)
    assert kept == ["stays"]
    assert (admission.active, admission.queued) == (0, 0)


def test_a_rate_window_refuses_beyond_its_minute() -> None:
    window = RateWindow(rpm=2, tpm=100)
    window.admit("k")
    window.spent(60)
    window.admit("k")
    with pytest.raises(QueueFullError, match="2 requests a minute"):
        window.admit("k")
    tokens = RateWindow(rpm=None, tpm=100)
    tokens.admit("k")
    tokens.spent(150)
    with pytest.raises(QueueFullError, match="100 tokens a minute") as refused:
        tokens.admit("k")
    assert 1 <= int(refused.value.headers()["Retry-After"]) <= 60


def test_a_rate_window_slides_requests_and_tokens_out_after_a_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr("proxy.admission.time.monotonic", lambda: now[0])
    window = RateWindow(rpm=4, tpm=100)
    for spent in (40, 40):
        window.admit("k")
        window.spent(spent)
        now[0] += 10
    window.admit("k")
    window.spent(30)  # 110 tokens in the window now
    with pytest.raises(QueueFullError, match="100 tokens a minute") as refused:
        window.admit("k")
    assert refused.value.headers()["Retry-After"] == "40"  # until the first 40 tokens leave
    now[0] = 1000.0 + 60  # the first request and its 40 tokens leave: 70 tokens, 2 requests
    window.admit("k")
    window.admit("k")
    with pytest.raises(QueueFullError, match="4 requests a minute"):
        window.admit("k")
    now[0] = 1000.0 + 10 + 60 + 20 + 60  # everything left long ago
    window.admit("k")
    window.spent(99)
    window.admit("k")  # 99 tokens: under the limit
    window.spent(1)
    with pytest.raises(QueueFullError, match="100 tokens a minute"):
        window.admit("k")
