from __future__ import annotations

import asyncio

from proxy.catalog import Catalog
from proxy.state import InstanceState, ModelStatus, OllamaStatus, Phase

CATALOG = Catalog.parse("smollm2", "all-minilm:l6-v2")


def _ready(state: InstanceState) -> None:
    state.set_ollama(OllamaStatus.UP)
    for tag in state.models:
        state.set_model(tag, ModelStatus.READY)


def test_phase_follows_ollama_and_models() -> None:
    state = InstanceState(CATALOG)
    assert state.phase is Phase.STARTING
    state.set_ollama(OllamaStatus.UP)
    assert state.phase is Phase.PULLING
    state.set_model("smollm2:latest", ModelStatus.PULLING, progress=0.5)
    assert state.snapshot()["models"]["smollm2:latest"]["progress"] == 0.5
    _ready(state)
    assert state.phase is Phase.READY
    assert state.snapshot()["ready"] is True


def test_present_is_enough_without_preload() -> None:
    state = InstanceState(CATALOG, preload=False)
    state.set_ollama(OllamaStatus.UP)
    for tag in state.models:
        state.set_model(tag, ModelStatus.PRESENT)
    assert state.is_ready


def test_failed_model_degrades_but_others_serve() -> None:
    state = InstanceState(CATALOG)
    _ready(state)
    state.set_model(
        "all-minilm:l6-v2", ModelStatus.FAILED, "pull model manifest: file does not exist"
    )
    assert state.phase is Phase.DEGRADED
    assert state.unavailable_reason("smollm2:latest") is None
    reason = state.unavailable_reason("all-minilm:l6-v2")
    assert reason is not None
    assert "file does not exist" in reason


def test_ollama_restart_degrades_and_counts() -> None:
    state = InstanceState(CATALOG)
    _ready(state)
    state.set_ollama(OllamaStatus.RESTARTING, "exit status -9")
    assert state.phase is Phase.DEGRADED
    assert state.ollama_restarts == 1
    assert "restarting" in (state.unavailable_reason("smollm2:latest") or "")
    state.set_ollama(OllamaStatus.UP)
    assert state.phase is Phase.READY


def test_stopping_is_terminal_and_listeners_see_changes() -> None:
    seen: list[tuple[Phase, Phase]] = []
    state = InstanceState(CATALOG)
    state.add_listener(lambda old, new: seen.append((old, new)))
    _ready(state)
    state.set_stopping()
    state.set_ollama(OllamaStatus.UP)
    assert state.phase is Phase.STOPPING
    assert seen == [
        (Phase.STARTING, Phase.PULLING),
        (Phase.PULLING, Phase.READY),
        (Phase.READY, Phase.STOPPING),
    ]


async def test_wait_for_wakes_on_change() -> None:
    state = InstanceState(CATALOG)
    waiter = asyncio.create_task(state.wait_for(lambda s: s.is_ready))
    await asyncio.sleep(0)
    assert not waiter.done()
    _ready(state)
    await asyncio.wait_for(waiter, timeout=1)
