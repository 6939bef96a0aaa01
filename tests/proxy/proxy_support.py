"""Helpers for the proxy app tests: the Ollama simulator as backend, the app served on loopback.

Every test talks real HTTP over loopback. The simulator runs as a subprocess
(:class:`SimulatorProcess`) with the test models pulled; the app from ``create_app`` is served by
aiohttp's ``TestServer`` on a free port in the test's event loop, with an ``InstanceState`` marked
ready. Blocking clients (the sync ``openai``/``ollama`` clients) must run in a thread
(``asyncio.to_thread``), since the proxy shares the test's loop.

The shared simulator and proxy are module-scoped; test modules run in a module-scoped loop
(``pytestmark = pytest.mark.asyncio(loop_scope="module")``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from aiohttp import web

from proxy.app import create_app
from proxy.catalog import Catalog
from proxy.config import Settings
from proxy.state import InstanceState, ModelStatus, OllamaStatus
from proxy.testing.harness import serve_app
from proxy.testing.services import SimulatorProcess
from tests.clients import CLIENT_TIMEOUT

API_KEY = "test-api-key-0123456789abcdef"
ADMIN_KEY = "test-admin-key-0123456789abcdef"
CHAT = "smollm2:135m"
CHAT2 = "smollm:135m"
EMBED = "all-minilm:l6-v2"
CHAT_ALIAS = "gpt-4o-mini"
EMBED_ALIAS = "text-embedding-3-small"
CATALOG = Catalog.parse(f"{CHAT},{CHAT2}", EMBED, f"{CHAT_ALIAS}={CHAT};{EMBED_ALIAS}={EMBED}")
MESSAGES = [{"role": "user", "content": "Write a short line about rivers."}]
PROMPT = "Once upon a time"
NUM_TOKENS = 12  # the simulator's SIM_NUM_TOKENS default
_FAST_SIM = {"SIM_PULL_DELAY": "0"}


@dataclass
class Proxy:
    """A running proxy app."""

    url: str
    app: web.Application
    settings: Settings
    state: InstanceState

    @property
    def headers(self) -> dict[str, str]:
        """The API-key header (empty when the proxy runs without a key)."""
        key = self.settings.proxy_api_key
        return {"Authorization": f"Bearer {key}"} if key else {}


def ready_state(catalog: Catalog = CATALOG) -> InstanceState:
    """A state in which Ollama is up and every model is ready."""
    state = InstanceState(catalog.models)
    state.set_ollama(OllamaStatus.UP)
    for model in catalog.models:
        state.set_model(model.tag, ModelStatus.READY)
    return state


def make_settings(sim_url: str, **overrides: Any) -> Settings:
    """Settings pointing at the simulator at ``sim_url``, with both keys set."""
    port = int(sim_url.rsplit(":", 1)[1])
    base = Settings(
        catalog=CATALOG,
        ollama_internal_port=port,
        proxy_api_key=API_KEY,
        proxy_admin_key=ADMIN_KEY,
    )
    return replace(base, **overrides)


@contextlib.asynccontextmanager
async def serve_proxy(
    sim_url: str, *, state: InstanceState | None = None, **overrides: Any
) -> AsyncIterator[Proxy]:
    """Serve a proxy in front of ``sim_url`` on a free loopback port for the block's duration."""
    settings = make_settings(sim_url, **overrides)
    state = state if state is not None else ready_state(settings.catalog)
    app = create_app(settings, state)
    async with serve_app(app) as url:
        yield Proxy(url, app, settings, state)


async def pull(sim_url: str, *models: str) -> None:
    """Pull ``models`` into the simulator (it answers only for pulled models)."""
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        for model in models:
            async with session.post(
                f"{sim_url}/api/pull", json={"model": model, "stream": False}
            ) as response:
                assert response.status == 200, await response.text()


@contextlib.asynccontextmanager
async def simulator(env: Mapping[str, str] | None = None) -> AsyncIterator[SimulatorProcess]:
    """A simulator subprocess with the test models pulled."""
    async with SimulatorProcess({**_FAST_SIM, **(env or {})}) as sim:
        await pull(sim.url, CHAT, CHAT2, EMBED)
        yield sim
