"""The shipped harness (``proxy.testing.services``) knows its own service from a stranger."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.testing.services import ServiceExited, SimulatorProcess


async def test_a_server_that_took_the_port_is_not_taken_for_the_simulator() -> None:
    async def root(_request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")  # what the simulator would answer

    sim = SimulatorProcess()
    stranger = web.Application()
    stranger.router.add_get("/", root)
    async with TestServer(stranger, host="127.0.0.1", port=sim.port):
        with pytest.raises(ServiceExited) as caught:
            await sim.astart()
    assert "address already in use" in caught.value.logs
    assert sim.returncode is not None
