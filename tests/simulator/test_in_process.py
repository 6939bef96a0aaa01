"""``create_app`` served in-process with ``aiohttp.test_utils``."""

from __future__ import annotations

from pathlib import Path

import ollama
import pytest
from aiohttp.test_utils import TestServer

from proxy.testing.simulator import create_app, expected_text
from tests.clients import CLIENT_TIMEOUT_SECONDS


async def test_in_process_app_serves_the_api(tmp_path: Path) -> None:
    app = create_app({"OLLAMA_MODELS": str(tmp_path), "SIM_PULL_DELAY": "0", "SIM_NUM_TOKENS": "4"})
    async with TestServer(app, host="127.0.0.1") as server:
        client = ollama.AsyncClient(host=str(server.make_url("")), timeout=CLIENT_TIMEOUT_SECONDS)
        await client.pull("smollm")
        reply = await client.generate(model="smollm", prompt="hi")
        assert reply.response == expected_text("smollm", "hi", 4)
    assert (tmp_path / "manifests/registry.ollama.ai/library/smollm/latest").is_file()


async def test_in_process_crash_raises_instead_of_exiting(tmp_path: Path) -> None:
    app = create_app(
        {"OLLAMA_MODELS": str(tmp_path), "SIM_PULL_DELAY": "0", "SIM_CRASH_AFTER": "0"}
    )
    async with TestServer(app, host="127.0.0.1") as server:
        client = ollama.AsyncClient(host=str(server.make_url("")), timeout=CLIENT_TIMEOUT_SECONDS)
        await client.pull("smollm")
        with pytest.raises(ollama.ResponseError) as info:
            await client.generate(model="smollm", prompt="hi", stream=False)
        assert info.value.status_code == 500
