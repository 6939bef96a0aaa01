"""Fixtures for the proxy app tests; the helpers and constants live in ``proxy_support``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest_asyncio
from proxy_support import Proxy, serve_proxy, simulator

from proxy.testing.services import SimulatorProcess
from tests.clients import CLIENT_TIMEOUT


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim() -> AsyncIterator[SimulatorProcess]:
    """The shared, fault-free simulator."""
    async with simulator() as process:
        yield process


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def proxy(sim: SimulatorProcess) -> AsyncIterator[Proxy]:
    """The shared proxy in front of :func:`sim`, with API and admin keys."""
    async with serve_proxy(sim.url) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client."""
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        yield session
