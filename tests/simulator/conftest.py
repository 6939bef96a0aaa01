"""Simulator fixtures: one shared, pre-pulled simulator per module and a factory for fresh ones."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import ollama
import pytest

from proxy.testing.services import SimulatorProcess
from tests.clients import CLIENT_TIMEOUT_SECONDS

CHAT_MODEL = "smollm2:135m"
EMBED_MODEL = "all-minilm"
FAST = {"SIM_PULL_DELAY": "0"}

MakeSim = Callable[..., Awaitable[SimulatorProcess]]


@pytest.fixture(scope="module")
def shared_sim() -> Iterator[SimulatorProcess]:
    """A running simulator with the chat and embedding models already pulled."""
    with SimulatorProcess(FAST) as sim:
        client = ollama.Client(host=sim.url, timeout=CLIENT_TIMEOUT_SECONDS)
        client.pull(CHAT_MODEL)
        client.pull(EMBED_MODEL)
        yield sim


@pytest.fixture
async def make_sim(tmp_path: Path) -> AsyncIterator[MakeSim]:
    """Start fresh simulators with extra environment; all are stopped at teardown."""
    started: list[SimulatorProcess] = []

    async def make(env: dict[str, str] | None = None, **kwargs: object) -> SimulatorProcess:
        sim = SimulatorProcess({**FAST, **(env or {})}, **kwargs)  # type: ignore[arg-type]
        started.append(sim)
        return await sim.astart()

    yield make
    for sim in started:
        await sim.astop()
