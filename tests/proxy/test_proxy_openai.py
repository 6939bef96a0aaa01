"""The real ``openai`` client, sync and async, through the proxy to the simulator."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
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


def sync_client(proxy: Proxy) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{proxy.url}/v1", api_key=API_KEY, max_retries=0, timeout=CLIENT_TIMEOUT_SECONDS
    )


def async_client(proxy: Proxy) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{proxy.url}/v1", api_key=API_KEY, max_retries=0, timeout=CLIENT_TIMEOUT_SECONDS
    )


async def test_chat_sync(proxy: Proxy) -> None:
    client = sync_client(proxy)
    result = await asyncio.to_thread(client.chat.completions.create, model=CHAT, messages=MESSAGES)
    assert result.choices[0].message.content == expected_text(CHAT, MESSAGES, NUM_TOKENS)
    assert result.model == CHAT
    assert result.usage is not None
    assert result.usage.completion_tokens == NUM_TOKENS


async def test_chat_async(proxy: Proxy) -> None:
    async with async_client(proxy) as client:
        result = await client.chat.completions.create(model=CHAT2, messages=MESSAGES)
    assert result.choices[0].message.content == expected_text(CHAT2, MESSAGES, NUM_TOKENS)


async def test_chat_stream_sync(proxy: Proxy) -> None:
    def run() -> list[str]:
        stream = sync_client(proxy).chat.completions.create(
            model=CHAT, messages=MESSAGES, stream=True
        )
        return [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]

    parts = await asyncio.to_thread(run)
    assert "".join(parts) == expected_text(CHAT, MESSAGES, NUM_TOKENS)


async def test_chat_stream_async_with_usage(proxy: Proxy) -> None:
    async with async_client(proxy) as client:
        stream = await client.chat.completions.create(
            model=CHAT,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text(CHAT, MESSAGES, NUM_TOKENS)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == NUM_TOKENS


@pytest.mark.parametrize(
    "name",
    [
        CHAT,
        "smollm2:135m",
        CHAT_ALIAS,
        f"ubiops-deployment/my-deployment/v1/{CHAT_ALIAS}",
        f"ubiops-deployment/my-deployment//{CHAT}",
        "registry.ollama.ai/library/smollm2:135m",
    ],
)
async def test_every_name_reaches_the_model_and_is_echoed(proxy: Proxy, name: str) -> None:
    async with async_client(proxy) as client:
        result = await client.chat.completions.create(model=name, messages=MESSAGES)
        stream = await client.chat.completions.create(model=name, messages=MESSAGES, stream=True)
        chunks = [chunk async for chunk in stream]
    assert result.choices[0].message.content == expected_text(CHAT, MESSAGES, NUM_TOKENS)
    # The answer names the model as the client did, as Ollama and OpenAI answer.
    assert result.model == name
    assert {chunk.model for chunk in chunks} == {name}


async def test_completions(proxy: Proxy) -> None:
    async with async_client(proxy) as client:
        result = await client.completions.create(model=CHAT_ALIAS, prompt=PROMPT)
        stream = await client.completions.create(model=CHAT, prompt=PROMPT, stream=True)
        streamed = "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])
    assert result.choices[0].text == expected_text(CHAT, PROMPT, NUM_TOKENS)
    assert streamed == expected_text(CHAT, PROMPT, NUM_TOKENS)


async def test_embeddings_default_base64_and_float(proxy: Proxy) -> None:
    texts = ["the river", "a stone"]
    async with async_client(proxy) as client:
        default = await client.embeddings.create(model=EMBED, input=texts)  # base64 on the wire
        floats = await client.embeddings.create(
            model=EMBED_ALIAS, input=texts[0], encoding_format="float"
        )
    for item, text in zip(default.data, texts, strict=True):
        assert item.embedding == pytest.approx(expected_embedding(EMBED, text), abs=1e-6)
    assert floats.data[0].embedding == pytest.approx(expected_embedding(EMBED, texts[0]), abs=1e-6)


async def test_embeddings_sync(proxy: Proxy) -> None:
    result = await asyncio.to_thread(
        sync_client(proxy).embeddings.create, model=EMBED, input="the river"
    )
    assert len(result.data[0].embedding) == len(expected_embedding(EMBED, "the river"))


async def test_models_list_and_retrieve(proxy: Proxy) -> None:
    async with async_client(proxy) as client:
        listed = [model.id async for model in client.models.list()]
        retrieved = await client.models.retrieve(f"ubiops-deployment/dep/v2/{CHAT_ALIAS}")
        by_tag = await client.models.retrieve("all-minilm:l6-v2")
        with pytest.raises(openai.NotFoundError) as caught:
            await client.models.retrieve("no-such-model")
    assert listed == [CHAT, CHAT2, EMBED, CHAT_ALIAS, EMBED_ALIAS]
    assert retrieved.id == CHAT_ALIAS
    assert retrieved.created > 0  # enriched from Ollama's /api/tags
    assert by_tag.id == EMBED
    assert "available models" in caught.value.message


def _sse_events(body: bytes) -> list[object]:
    """The events of an SSE body, with the fields that vary per request (id, created) removed."""
    events: list[object] = []
    assert body.endswith(b"\n\n")
    for block in body.split(b"\n\n")[:-1]:
        assert block.startswith(b"data: ")
        data = block[len(b"data: ") :]
        if data == b"[DONE]":
            events.append("[DONE]")
            continue
        event = json.loads(data)
        event.pop("id")
        event.pop("created")
        events.append(event)
    return events


async def test_sse_chunks_equal_the_simulators(proxy: Proxy, sim: SimulatorProcess) -> None:
    body = {"model": CHAT, "messages": MESSAGES, "stream": True}
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        async with session.post(f"{sim.url}/v1/chat/completions", json=body) as direct:
            expected = await direct.read()
        async with session.post(
            f"{proxy.url}/v1/chat/completions", json=body, headers=proxy.headers
        ) as relayed:
            assert relayed.headers["Content-Type"].startswith("text/event-stream")
            assert relayed.headers["Cache-Control"] == "no-cache"
            assert relayed.headers["X-Accel-Buffering"] == "no"
            got = await relayed.read()
    assert _sse_events(got) == _sse_events(expected)
    assert _sse_events(got)[-1] == "[DONE]"
    assert len(_sse_events(got)) == NUM_TOKENS + 2  # tokens, the finish chunk, [DONE]
