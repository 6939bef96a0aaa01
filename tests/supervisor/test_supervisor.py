"""The supervisor in-process, with the simulator as a real ``ollama serve`` child."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tenacity
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from proxy.catalog import Catalog
from proxy.children import Backoff
from proxy.config import Settings
from proxy.state import InstanceState, ModelStatus, OllamaStatus, Phase
from proxy.supervisor import OllamaFatalError, Supervisor
from proxy.testing.harness import free_port
from proxy.testing.simulator import read_pull_log
from tests.clients import CLIENT_TIMEOUT

from .helpers import EXIT_TIMEOUT, READY_TIMEOUT, SIM_BIN, alive

pytestmark = pytest.mark.slow

FAST = Backoff(initial=0.01, maximum=0.05)
NOTICE_CAP = 0.1
"""Readiness must be noticed within the poll cap..."""
NOTICE_SLACK = 0.1
"""...plus this much for a loaded machine (seconds)."""
SLOW_START = 1.0
"""SIM_START_DELAY for the slow-start test (seconds)."""

MakeSupervisor = Callable[..., tuple[Supervisor, InstanceState, Path]]


@pytest.fixture
def sim_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the simulator (spawned with our environment) at fresh directories."""
    for name in list(os.environ):
        if name.startswith(("SIM_", "OLLAMA_")):
            monkeypatch.delenv(name)
    state_dir = tmp_path / "sim-state"
    state_dir.mkdir()
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("SIM_STATE_DIR", str(state_dir))
    monkeypatch.setenv("SIM_PULL_DELAY", "0.001")
    monkeypatch.setenv("SIM_PULL_STEPS", "3")
    return state_dir


@pytest.fixture
async def make_supervisor(sim_env: Path) -> AsyncIterator[MakeSupervisor]:
    made: list[Supervisor] = []

    def make(
        chat: str = "smollm2:135m", embedding: str = "all-minilm", **overrides: Any
    ) -> tuple[Supervisor, InstanceState, Path]:
        values: dict[str, Any] = {
            "ollama_bin": str(SIM_BIN),
            "catalog": Catalog.parse(chat, embedding),
            "ollama_internal_port": free_port(),
            "pull_retries": 3,
            "ollama_start_attempts": 3,
            "ollama_start_timeout": READY_TIMEOUT,
        }
        values.update(overrides)
        settings = Settings(**values)
        state = InstanceState(settings.catalog, preload=settings.preload_models)
        supervisor = Supervisor(
            settings,
            state,
            start_backoff=FAST,
            restart_backoff=FAST,
            pull_wait=tenacity.wait_none(),
        )
        made.append(supervisor)
        return supervisor, state, sim_env

    yield make
    for supervisor in made:
        await supervisor.stop()
        child = supervisor.child
        assert child is None or child.pid is None or not alive(child.pid)


async def wait_state(state: InstanceState, predicate: Callable[[InstanceState], bool]) -> None:
    try:
        await asyncio.wait_for(state.wait_for(predicate), READY_TIMEOUT)
    except TimeoutError:
        pytest.fail(f"state never matched; last: {state.readiness().as_json()}")


async def test_slow_start_is_noticed_promptly(
    make_supervisor: MakeSupervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIM_START_DELAY", str(SLOW_START))
    supervisor, state, _ = make_supervisor()
    version_url = f"{supervisor.settings.ollama_url}/api/version"
    up_at: list[float] = []
    answered_at: list[float] = []

    async def note_up() -> None:  # wakes on every state change
        await state.wait_for(lambda s: s.ollama_status is OllamaStatus.UP)
        up_at.append(time.monotonic())

    async def watch(session: aiohttp.ClientSession) -> None:  # an independent, tight poller
        while not answered_at:
            try:
                async with session.get(version_url) as r:
                    if r.status == 200:
                        answered_at.append(time.monotonic())
            except aiohttp.ClientError:
                await asyncio.sleep(0.002)

    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        await supervisor.start()
        watcher = asyncio.create_task(watch(session))
        noticer = asyncio.create_task(note_up())
        await wait_state(state, lambda s: s.phase is Phase.READY)
        await asyncio.gather(watcher, noticer)
    assert answered_at[0] - started >= SLOW_START
    assert up_at[0] - answered_at[0] < NOTICE_CAP + NOTICE_SLACK


async def test_start_failure_is_retried_a_bounded_number_of_times_then_fatal(
    make_supervisor: MakeSupervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIM_EXIT_AT_START", "3")
    supervisor, state, _ = make_supervisor(ollama_start_attempts=3)
    with capture_logs() as logs:
        await supervisor.start()
        await wait_state(state, lambda s: s.ollama_status is OllamaStatus.FAILED)
    assert isinstance(supervisor.fatal, OllamaFatalError)
    assert sum(1 for e in logs if e["event"] == "ollama started") == 3
    reason = state.readiness().details["ollama"]["reason"]
    assert "ollama serve exited with status 3 before it was ready" in reason
    assert "simulated start failure" in reason  # the stderr tail
    assert "gave up after 3 attempts" in reason
    assert state.phase is Phase.DEGRADED
    assert not supervisor.child or supervisor.child.returncode is not None


async def test_a_server_already_on_the_internal_port_is_not_taken_for_ollama(
    make_supervisor: MakeSupervisor,
) -> None:
    async def version(_request: web.Request) -> web.Response:
        return web.json_response({"version": "0.0.1-someone-else"})

    squatter = web.Application()
    squatter.router.add_get("/api/version", version)
    async with TestServer(squatter, host="127.0.0.1") as other:
        port = other.port
        supervisor, state, _ = make_supervisor(ollama_internal_port=port)
        with capture_logs() as logs:
            await supervisor.start()
            await wait_state(state, lambda s: s.ollama_status is OllamaStatus.FAILED)
    assert not any(e["event"] == "ollama ready" for e in logs)
    assert not any(e["event"] == "ollama started" for e in logs), "no child started there"
    reason = state.readiness().details["ollama"]["reason"]
    assert f"127.0.0.1:{port} (OLLAMA_INTERNAL_HOST) is already in use" in reason
    assert "gave up after 3 attempts" in reason


@pytest.mark.parametrize("mode", ["http500", "cut", "inband"])
async def test_two_failed_pulls_are_retried_then_succeed(
    make_supervisor: MakeSupervisor, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv("SIM_PULL_FAILURES", "2")
    monkeypatch.setenv("SIM_PULL_FAILURE_MODE", mode)
    supervisor, state, state_dir = make_supervisor(pull_concurrency=1)
    with capture_logs() as logs:
        await supervisor.start()
        await wait_state(state, lambda s: s.phase is Phase.READY)
    outcomes = [(p["outcome"], p["reason"]) for p in read_pull_log(state_dir)]
    assert outcomes[:2] == [("failed", mode), ("failed", mode)]
    assert outcomes[2:] == [("success", None), ("success", None)]
    retries = [e for e in logs if e["event"] == "pull failed; retrying"]
    assert [e["attempt"] for e in retries] == [1, 2]


async def test_unknown_model_fails_fast_and_the_others_become_ready(
    make_supervisor: MakeSupervisor,
) -> None:
    supervisor, state, state_dir = make_supervisor(chat="smollm2:135m,doesnotexist:1b")
    await supervisor.start()
    await wait_for_settled(supervisor)
    missing = state.models["doesnotexist:1b"]
    assert missing.status is ModelStatus.FAILED
    assert missing.reason == "pull failed: pull model manifest: file does not exist"
    assert [p["reason"] for p in read_pull_log(state_dir) if p["model"] == "doesnotexist:1b"] == [
        "not_found"
    ]
    assert state.models["smollm2:135m"].status is ModelStatus.READY
    assert state.models["all-minilm:latest"].status is ModelStatus.READY
    assert state.phase is Phase.DEGRADED


async def test_crash_after_ready_restarts_without_downloading_again(
    make_supervisor: MakeSupervisor,
) -> None:
    supervisor, state, state_dir = make_supervisor()
    await supervisor.start()
    await wait_state(state, lambda s: s.phase is Phase.READY)
    pulls = read_pull_log(state_dir)
    first = supervisor.child
    assert first is not None
    assert first.pid is not None
    os.kill(first.pid, signal.SIGKILL)
    await wait_state(state, lambda s: s.ollama_status is OllamaStatus.RESTARTING)
    assert not state.serving
    assert "was killed by signal SIGKILL" in state.readiness().details["ollama"]["reason"]
    await wait_state(state, lambda s: s.phase is Phase.READY)
    assert supervisor.child is not first
    assert state.ollama_restarts == 1
    assert read_pull_log(state_dir) == pulls  # present models were not pulled again


async def test_stop_during_a_pull_is_prompt_and_leaves_no_child(
    make_supervisor: MakeSupervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIM_PULL_DELAY", "0.5")
    supervisor, state, _ = make_supervisor()
    await supervisor.start()
    await wait_state(state, lambda s: ModelStatus.PULLING in {m.status for m in s.models.values()})
    process = supervisor.child
    assert process is not None
    assert process.pid is not None
    started = time.monotonic()
    await asyncio.wait_for(supervisor.stop(), EXIT_TIMEOUT)
    assert time.monotonic() - started < EXIT_TIMEOUT / 3
    assert not alive(process.pid)
    assert state.ollama_status is OllamaStatus.STOPPED
    await supervisor.stop()  # idempotent


async def test_no_warm_up_settles_on_present(make_supervisor: MakeSupervisor) -> None:
    supervisor, state, _ = make_supervisor(preload_models=False)
    await supervisor.start()
    await wait_for_settled(supervisor)
    assert {m.status for m in state.models.values()} == {ModelStatus.PRESENT}
    assert state.serving


async def wait_for_settled(supervisor: Supervisor) -> None:
    try:
        await asyncio.wait_for(supervisor.wait_settled(), READY_TIMEOUT)
    except TimeoutError:
        pytest.fail("the supervisor never settled")
