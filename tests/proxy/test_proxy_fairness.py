"""Many models, many clients: per-model budgets, keys taking turns, scoped keys, token metrics,
the usage a client asked for, and OpenAI embeddings as the SDKs send them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio
from proxy_support import (
    API_KEY,
    CHAT,
    EMBED,
    MESSAGES,
    NUM_TOKENS,
    Proxy,
    ready_state,
    serve_proxy,
    simulator,
)

from proxy.keys import parse_keys
from proxy.state import ModelStatus
from proxy.testing.services import SimulatorProcess
from proxy.testing.simulator import expected_embedding, expected_text
from tests.clients import CLIENT_TIMEOUT, CLIENT_TIMEOUT_SECONDS

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN_DELAY = 0.03
"""SIM_TOKEN_DELAY of the slow simulator: a 12-token answer takes ~0.4 s."""
TEAM_A = "team-a-key-0123456789"
TEAM_B = "team-b-key-0123456789"
LIMITED = "limited-key-0123456789"
KEYS = parse_keys(
    json.dumps(
        {
            "keys": [
                {"name": "team-a", "key": TEAM_A, "models": ["smollm2*"], "apis": ["openai"]},
                {"name": "team-b", "key": TEAM_B},
                {"name": "limited", "key": LIMITED, "requests_per_minute": 2},
            ]
        }
    )
)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def slow_sim() -> AsyncIterator[SimulatorProcess]:
    async with simulator({"SIM_TOKEN_DELAY": str(TOKEN_DELAY)}) as sim:
        yield sim


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fair(slow_sim: SimulatorProcess) -> AsyncIterator[Proxy]:
    """A proxy whose chat model has one slot, with three scoped keys."""
    state = ready_state()
    state.set_model(EMBED, ModelStatus.READY, dimensions=384)
    async with serve_proxy(
        slow_sim.url, state=state, keys=KEYS, model_concurrency=((CHAT, 1),)
    ) as proxy:
        yield proxy


async def _chat(http: aiohttp.ClientSession, proxy: Proxy, key: str, tag: str) -> tuple[str, float]:
    body = {"model": CHAT, "messages": [{"role": "user", "content": tag}], "stream": False}
    async with http.post(f"{proxy.url}/v1/chat/completions", json=body, headers=auth(key)) as r:
        assert r.status == 200, await r.text()
        await r.read()
    return tag, time.monotonic()


async def test_embeddings_are_answered_while_chat_streams_fill_their_model(fair: Proxy) -> None:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        chats = [asyncio.create_task(_chat(http, fair, TEAM_B, f"c{i}")) for i in range(4)]
        await asyncio.sleep(TOKEN_DELAY * 2)  # one runs, three wait for the chat model's slot
        started = time.monotonic()
        body = {"model": EMBED, "input": "while the chats run"}
        async with http.post(f"{fair.url}/v1/embeddings", json=body, headers=auth(TEAM_B)) as r:
            assert r.status == 200
        embedded = time.monotonic() - started
        finished = await asyncio.gather(*chats)
    assert embedded < TOKEN_DELAY * NUM_TOKENS, f"the embedding waited {embedded:.2f} s"
    assert embedded + started < min(at for _, at in finished[1:])


async def test_a_second_key_is_served_while_a_first_has_a_long_queue(fair: Proxy) -> None:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        busy = [asyncio.create_task(_chat(http, fair, TEAM_B, f"b{i}")) for i in range(5)]
        await asyncio.sleep(TOKEN_DELAY * 2)
        other = asyncio.create_task(_chat(http, fair, TEAM_A, "a0"))
        results = await asyncio.gather(*busy, other)
    order = [tag for tag, _ in sorted(results, key=lambda result: result[1])]
    assert order.index("a0") <= 2, f"the second key waited behind the first's queue: {order}"


async def test_a_key_outside_its_scope_is_refused_naming_its_scope(fair: Proxy) -> None:
    headers = auth(TEAM_A)
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT, headers=headers) as http:
        async with http.post(f"{fair.url}/v1/embeddings", json={"model": EMBED, "input": "x"}) as r:
            assert r.status == 403
            message = (await r.json())["error"]["message"]
        assert message == (
            "key 'team-a' may not use model 'all-minilm:l6-v2'; it may use smollm2* through openai"
        )
        async with http.post(f"{fair.url}/api/chat", json={"model": CHAT, "messages": []}) as r:
            assert r.status == 403
            assert "may not use the ollama API" in (await r.json())["error"]
        body = {"model": CHAT, "max_tokens": 5, "messages": MESSAGES}
        async with http.post(f"{fair.url}/v1/messages", json=body) as r:
            assert r.status == 403
            assert (await r.json())["error"]["type"] == "permission_error"
        async with http.get(f"{fair.url}/v1/models") as r:
            listed = {model["id"] for model in (await r.json())["data"]}
        assert listed == {CHAT, "gpt-4o-mini"}, "a key lists only what it may use (an alias too)"


async def test_a_key_over_its_rate_is_told_when_to_come_back(fair: Proxy) -> None:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        await _chat(http, fair, LIMITED, "one")
        await _chat(http, fair, LIMITED, "two")
        body = {"model": CHAT, "messages": MESSAGES}
        async with http.post(f"{fair.url}/api/chat", json=body, headers=auth(LIMITED)) as r:
            assert r.status == 429
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            assert "2 requests a minute" in (await r.json())["error"]


async def test_tokens_and_timings_are_counted_per_model_and_key(fair: Proxy) -> None:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        async with http.get(f"{fair.url}/metrics", headers=auth(TEAM_B)) as r:
            before = _samples(await r.text())
        for stream in (False, True):
            body = {"model": CHAT, "messages": MESSAGES, "stream": stream}
            async with http.post(
                f"{fair.url}/v1/chat/completions", json=body, headers=auth(TEAM_A)
            ) as r:
                await r.read()
            async with http.post(f"{fair.url}/api/chat", json=body, headers=auth(TEAM_B)) as r:
                await r.read()
        async with http.get(f"{fair.url}/metrics", headers=auth(TEAM_B)) as r:
            after = _samples(await r.text())
    for key in ("team-a", "team-b"):
        labels = f'{{key="{key}",model="{CHAT}"}}'
        grew = after[f"proxy_completion_tokens_total{labels}"] - before.get(
            f"proxy_completion_tokens_total{labels}", 0
        )
        assert grew == 2 * NUM_TOKENS, key
        assert after[f"proxy_prompt_tokens_total{labels}"] > 0
        assert after[f"proxy_time_to_first_token_seconds_count{labels}"] >= 1
        assert after[f"proxy_queue_wait_seconds_count{labels}"] >= 2
    # Ollama's durations on the native API; the proxy's own timing of an OpenAI stream.
    team_b, team_a = (f'{{key="{key}",model="{CHAT}"}}' for key in ("team-b", "team-a"))
    assert after[f"proxy_generation_tokens_per_second_count{team_b}"] >= 2
    assert after[f"proxy_generation_tokens_per_second_count{team_a}"] >= 1
    assert after[f'proxy_prompt_tokens_per_second_count{{key="team-b",model="{CHAT}"}}'] >= 2


def _samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


async def _stream_events(url: str, body: dict[str, Any], headers: dict[str, str]) -> list[Any]:
    async with (
        aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http,
        http.post(f"{url}/v1/chat/completions", json=body, headers=headers) as r,
    ):
        raw = await r.read()
    events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
    return [event if event == "[DONE]" else json.loads(event) for event in events]


def _shape(events: list[Any]) -> list[Any]:
    """What two streams of one request share: every chunk's choices and usage, in order."""
    return [e if e == "[DONE]" else (e["choices"], e.get("usage")) for e in events]


@pytest.mark.parametrize("include_usage", [None, False, True])
async def test_a_stream_is_exactly_what_the_client_asked_for(
    proxy: Proxy, sim: SimulatorProcess, include_usage: bool | None
) -> None:
    body: dict[str, Any] = {"model": CHAT, "messages": MESSAGES, "stream": True}
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    through = await _stream_events(proxy.url, body, proxy.headers)
    direct = await _stream_events(sim.url, body, {})
    assert _shape(through) == _shape(direct)
    usage_chunks = [e for e in through if e != "[DONE]" and not e["choices"]]
    assert len(usage_chunks) == (1 if include_usage else 0)


async def test_base64_embeddings_decode_to_the_floats(proxy: Proxy) -> None:
    client = openai.OpenAI(
        base_url=f"{proxy.url}/v1", api_key=API_KEY, max_retries=0, timeout=CLIENT_TIMEOUT_SECONDS
    )
    texts = ["rivers run", "to the sea"]
    default = await asyncio.to_thread(client.embeddings.create, model=EMBED, input=texts)
    floats = await asyncio.to_thread(
        client.embeddings.create, model=EMBED, input=texts, encoding_format="float"
    )
    for decoded, plain, text in zip(default.data, floats.data, texts, strict=True):
        assert decoded.embedding == pytest.approx(plain.embedding, abs=1e-6)
        assert plain.embedding == pytest.approx(expected_embedding(EMBED, text), abs=1e-6)
    async with (
        aiohttp.ClientSession(timeout=CLIENT_TIMEOUT, headers=proxy.headers) as http,
        http.post(
            f"{proxy.url}/v1/embeddings",
            json={"model": EMBED, "input": "x", "encoding_format": "base64"},
        ) as r,
    ):
        assert isinstance((await r.json())["data"][0]["embedding"], str), "base64 on the wire"


async def test_dimensions_a_model_cannot_honour_are_refused(fair: Proxy) -> None:
    headers = auth(TEAM_B)
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT, headers=headers) as http:
        for dimensions in (385, 0, "64"):
            body = {"model": EMBED, "input": "x", "dimensions": dimensions}
            async with http.post(f"{fair.url}/v1/embeddings", json=body) as r:
                assert r.status == 400, dimensions
                message = (await r.json())["error"]["message"]
                assert "from 1 to 384" in message
        body = {"model": EMBED, "input": "x", "dimensions": 64}
        async with http.post(f"{fair.url}/v1/embeddings", json=body) as r:
            assert r.status == 200
            assert len((await r.json())["data"][0]["embedding"]) == 64


async def test_chat_text_is_unchanged_by_all_this(fair: Proxy) -> None:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT, headers=auth(TEAM_A)) as http:
        body = {"model": CHAT, "messages": MESSAGES}
        async with http.post(f"{fair.url}/v1/chat/completions", json=body) as r:
            answer = await r.json()
    assert answer["choices"][0]["message"]["content"] == expected_text(CHAT, MESSAGES, NUM_TOKENS)
