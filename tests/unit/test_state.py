from __future__ import annotations

import asyncio

import pytest

from proxy.catalog import Catalog
from proxy.state import (
    InstanceState,
    InvalidTransition,
    ModelStatus,
    OllamaStatus,
    Phase,
    Readiness,
)

CATALOG = Catalog.parse("smollm2", "all-minilm:l6-v2")


def _ready(state: InstanceState) -> None:
    if state.ollama_status is not OllamaStatus.UP:
        state.set_ollama(OllamaStatus.UP)
    for tag in state.models:
        state.set_model(tag, ModelStatus.READY)


def test_phase_follows_ollama_and_models() -> None:
    state = InstanceState(CATALOG)
    assert state.phase is Phase.STARTING
    state.set_ollama(OllamaStatus.UP)
    assert state.phase is Phase.PULLING
    state.set_model("smollm2:latest", ModelStatus.PULLING, progress=0.5)
    readiness = state.readiness()
    assert readiness.details["models"]["smollm2:latest"]["progress"] == 0.5
    assert not readiness.serving
    assert readiness.reason == "smollm2:latest pulling 50%; all-minilm:l6-v2 pending"
    _ready(state)
    assert state.phase is Phase.READY
    assert state.readiness().as_json()["ready"] is True


def test_present_is_enough_without_preload() -> None:
    state = InstanceState(CATALOG, preload=False)
    state.set_ollama(OllamaStatus.UP)
    for tag in state.models:
        state.set_model(tag, ModelStatus.PRESENT)
    assert state.serving


def test_failed_model_degrades_but_others_serve() -> None:
    state = InstanceState(CATALOG)
    _ready(state)
    state.set_model(
        "all-minilm:l6-v2", ModelStatus.FAILED, "pull model manifest: file does not exist"
    )
    assert state.phase is Phase.DEGRADED
    assert state.serving, "degraded but serving counts as ready"
    assert "all-minilm:l6-v2 failed: pull model manifest" in (state.readiness().reason or "")
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


def test_stopping_is_terminal() -> None:
    state = InstanceState(CATALOG)
    _ready(state)
    state.set_stopping()
    state.set_model("smollm2:latest", ModelStatus.READY)
    assert state.phase is Phase.STOPPING
    assert not state.serving


def test_all_models_failed_is_not_serving() -> None:
    state = InstanceState(CATALOG)
    _ready(state)
    for tag in state.models:
        state.set_model(tag, ModelStatus.FAILED, "gone")
    assert state.phase is Phase.DEGRADED
    assert not state.serving


def test_a_model_still_pulling_holds_readiness_back_even_when_another_failed() -> None:
    state = InstanceState(CATALOG)
    state.set_ollama(OllamaStatus.UP)
    state.set_model("smollm2:latest", ModelStatus.FAILED, "gone")
    state.set_model("all-minilm:l6-v2", ModelStatus.PULLING, progress=0.1)
    assert not state.serving


def test_ollama_failure_is_a_terminal_verdict() -> None:
    state = InstanceState(CATALOG)
    state.set_ollama(OllamaStatus.FAILED, "exit status 1")
    readiness = state.readiness()
    assert (readiness.serving, readiness.gave_up) == (False, True)
    assert readiness.reason == "Ollama is failed: exit status 1"
    with pytest.raises(InvalidTransition, match="from failed to up"):
        state.set_ollama(OllamaStatus.UP)


def test_ollama_status_moves_only_along_its_transitions() -> None:
    state = InstanceState(CATALOG)
    with pytest.raises(InvalidTransition, match="from starting to restarting"):
        state.set_ollama(OllamaStatus.RESTARTING)
    state.set_ollama(OllamaStatus.UP)
    with pytest.raises(InvalidTransition, match="from up to starting"):
        state.set_ollama(OllamaStatus.STARTING)
    state.set_ollama(OllamaStatus.STOPPED)
    with pytest.raises(InvalidTransition):
        state.set_ollama(OllamaStatus.UP)


def test_the_readiness_document_reads_back_the_same() -> None:
    state = InstanceState(CATALOG)
    _ready(state)
    state.set_model("all-minilm:l6-v2", ModelStatus.FAILED, "gone")
    readiness = state.readiness()
    assert Readiness.from_json(readiness.as_json()) == readiness
    assert readiness.summary() == "ready (degraded): all-minilm:l6-v2 failed: gone"
    for bad in (None, [], {"status": "nonsense"}, {"status": "ready"}):
        with pytest.raises(ValueError, match="readiness document"):
            Readiness.from_json(bad)


async def test_wait_for_wakes_on_change() -> None:
    state = InstanceState(CATALOG)
    waiter = asyncio.create_task(state.wait_for(lambda s: s.serving))
    await asyncio.sleep(0)
    assert not waiter.done()
    _ready(state)
    await asyncio.wait_for(waiter, timeout=1)
