"""The real ``ollama`` client, sync and async, through the proxy to the simulator."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import ollama
import pytest
from proxy_support import (
    API_KEY,
    CHAT,
    CHAT2,
    CHAT_ALIAS,
    EMBED,
    EMBED_ALIAS,
    MESSAGES,
    NUM_TOKENS,
    PROMPT,
    Proxy,
)

from proxy.testing.services import SimulatorProcess
from proxy.testing.simulator import expected_embedding, expected_text
from tests.clients import CLIENT_TIMEOUT, CLIENT_TIMEOUT_SECONDS

pytestmark = pytest.mark.asyncio(loop_scope="module")


def sync_client(proxy: Proxy) -> ollama.Client:
    return ollama.Client(
        host=proxy.url,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=CLIENT_TIMEOUT_SECONDS,
    )


def async_client(proxy: Proxy) -> ollama.AsyncClient:
    return ollama.AsyncClient(
        host=proxy.url,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=CLIENT_TIMEOUT_SECONDS,
    )


async def test_chat_sync_stream_and_not(proxy: Proxy) -> None:
    client = sync_client(proxy)

    def run() -> tuple[str, str]:
        whole = client.chat(model=CHAT_ALIAS, messages=MESSAGES)
        parts = [part.message.content or "" for part in client.chat(CHAT, MESSAGES, stream=True)]
        return whole.message.content or "", "".join(parts)

    whole, streamed = await asyncio.to_thread(run)
    assert whole == expected_text(CHAT, MESSAGES, NUM_TOKENS)
    assert streamed == whole


async def test_chat_async_stream(proxy: Proxy) -> None:
    parts = []
    async for part in await async_client(proxy).chat(CHAT2, MESSAGES, stream=True):
        parts.append(part)
    assert "".join(p.message.content or "" for p in parts) == expected_text(
        CHAT2, MESSAGES, NUM_TOKENS
    )
    assert parts[-1].done
    assert parts[-1].model == CHAT2


async def test_generate(proxy: Proxy) -> None:
    client = async_client(proxy)
    whole = await client.generate(model=f"ubiops-deployment/d/v1/{CHAT}", prompt=PROMPT)
    streamed = [p.response async for p in await client.generate(CHAT, PROMPT, stream=True)]
    assert whole.response == expected_text(CHAT, PROMPT, NUM_TOKENS)
    assert "".join(streamed) == whole.response
    assert whole.model == f"ubiops-deployment/d/v1/{CHAT}", "echoed as the client named it"


async def test_embed_and_legacy_embeddings(proxy: Proxy) -> None:
    client = async_client(proxy)
    embedded = await client.embed(model=EMBED_ALIAS, input=["the river", "a stone"])
    legacy = await client.embeddings(model=EMBED, prompt="the river")
    assert embedded.embeddings[0] == pytest.approx(expected_embedding(EMBED, "the river"), abs=1e-6)
    assert embedded.embeddings[1] == pytest.approx(expected_embedding(EMBED, "a stone"), abs=1e-6)
    assert list(legacy.embedding) == pytest.approx(expected_embedding(EMBED, "the river"), abs=1e-5)


async def test_list_show_ps_version(proxy: Proxy, http: aiohttp.ClientSession) -> None:
    client = sync_client(proxy)
    listed = await asyncio.to_thread(client.list)
    shown = await asyncio.to_thread(client.show, CHAT_ALIAS)
    await async_client(proxy).generate(CHAT, PROMPT)  # something is loaded
    running = await asyncio.to_thread(client.ps)
    async with http.get(proxy.url + "/api/version", headers=proxy.headers) as response:
        version = await response.json()  # the ollama client has no version() method
    names = [m.model for m in listed.models]
    assert names == [CHAT, CHAT2, EMBED, CHAT_ALIAS, "text-embedding-3-small"]
    assert listed.models[0].digest  # details come from Ollama
    assert listed.models[0].details is not None
    assert listed.models[0].details.parameter_size == "135M"
    assert shown.capabilities is not None
    assert "completion" in shown.capabilities
    assert CHAT in [m.model for m in running.models]
    assert version["version"]


async def test_show_unknown_model_is_404(proxy: Proxy) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await async_client(proxy).show("llama3:70b")
    assert caught.value.status_code == 404
    assert "available models" in caught.value.error


async def test_root_says_ollama_is_running(proxy: Proxy, http: aiohttp.ClientSession) -> None:
    async with http.get(proxy.url + "/", headers=proxy.headers) as response:
        assert response.status == 200
        assert await response.text() == "Ollama is running"
    async with http.head(proxy.url + "/", headers=proxy.headers) as response:
        assert response.status == 200


def _ndjson(body: bytes) -> list[dict[str, object]]:
    """The lines of an NDJSON body, without the fields that vary per request."""
    assert body.endswith(b"\n")
    lines = []
    for line in body.splitlines():
        item = json.loads(line)
        for varying in ("created_at", "total_duration", "load_duration", "eval_duration"):
            item.pop(varying, None)
        item.pop("prompt_eval_duration", None)
        lines.append(item)
    return lines


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"model": CHAT, "messages": MESSAGES}),
        ("/api/generate", {"model": CHAT, "prompt": PROMPT}),
    ],
)
async def test_ndjson_lines_equal_the_simulators(
    proxy: Proxy, sim: SimulatorProcess, path: str, body: dict[str, object]
) -> None:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        async with session.post(sim.url + path, json=body) as direct:
            expected = await direct.read()
        async with session.post(proxy.url + path, json=body, headers=proxy.headers) as relayed:
            assert relayed.headers["Content-Type"] == direct.headers["Content-Type"]
            assert relayed.headers["X-Accel-Buffering"] == "no"
            got = await relayed.read()
    assert _ndjson(got) == _ndjson(expected)
    assert len(_ndjson(got)) == NUM_TOKENS + 1
    assert _ndjson(got)[-1]["done"] is True
