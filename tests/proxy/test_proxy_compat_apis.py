"""The other inference APIs Ollama serves, through the proxy with their stock clients: OpenAI's
Responses API (``openai``'s ``responses.create``) and Anthropic's Messages API (``anthropic``'s
``messages.create`` and ``messages.stream``), with everything the other inference routes have:
auth (``x-api-key`` included), catalog names, kind checks, errors in each API's shape, and a cut
stream ending in an error event of the stream's own framing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import pytest_asyncio
from proxy_support import (
    API_KEY,
    CHAT,
    CHAT_ALIAS,
    EMBED,
    NUM_TOKENS,
    Proxy,
    serve_proxy,
    simulator,
)

from proxy.testing.services import SimulatorProcess
from proxy.testing.simulator import expected_text
from tests.clients import CLIENT_TIMEOUT, CLIENT_TIMEOUT_SECONDS

pytestmark = pytest.mark.asyncio(loop_scope="module")

QUESTION = "Why is the sky blue?"
MESSAGES = [{"role": "user", "content": QUESTION}]
CUT_AFTER = 4
"""SIM_STREAM_CUT_AFTER of the cutting simulator: it drops the connection after 4 chunks."""


def openai_client(proxy: Proxy, key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{proxy.url}/v1", api_key=key, max_retries=0, timeout=CLIENT_TIMEOUT_SECONDS
    )


def anthropic_client(proxy: Proxy, key: str = API_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=proxy.url, api_key=key, max_retries=0, timeout=CLIENT_TIMEOUT_SECONDS
    )


async def test_responses_whole_and_streamed(proxy: Proxy) -> None:
    client = openai_client(proxy)
    whole = await asyncio.to_thread(client.responses.create, model=CHAT_ALIAS, input=QUESTION)
    assert whole.output_text == expected_text(CHAT, MESSAGES, NUM_TOKENS)

    def stream() -> tuple[str, list[str]]:
        events = list(client.responses.create(model=CHAT, input=QUESTION, stream=True))
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        return text, [e.type for e in events]

    text, types = await asyncio.to_thread(stream)
    assert text == whole.output_text
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"


async def test_anthropic_messages_create_and_stream(proxy: Proxy) -> None:
    client = anthropic_client(proxy)
    message = await asyncio.to_thread(
        client.messages.create, model=CHAT, max_tokens=200, messages=MESSAGES
    )
    assert message.content[0].text == expected_text(CHAT, MESSAGES, NUM_TOKENS)  # type: ignore[union-attr]

    def stream() -> str:
        with client.messages.stream(model=CHAT_ALIAS, max_tokens=200, messages=MESSAGES) as s:
            return "".join(s.text_stream)

    assert await asyncio.to_thread(stream) == message.content[0].text  # type: ignore[union-attr]


async def test_errors_come_in_each_apis_shape(proxy: Proxy) -> None:
    anthropic_ = anthropic_client(proxy)
    with pytest.raises(anthropic.NotFoundError) as missing:
        await asyncio.to_thread(
            anthropic_.messages.create, model="llama3", max_tokens=10, messages=MESSAGES
        )
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError, match="embedding model"):
        await asyncio.to_thread(
            anthropic_.messages.create, model=EMBED, max_tokens=10, messages=MESSAGES
        )
    with pytest.raises(anthropic.AuthenticationError):
        await asyncio.to_thread(
            anthropic_client(proxy, "wrong-key-0123456789").messages.create,
            model=CHAT,
            max_tokens=10,
            messages=MESSAGES,
        )
    responses = openai_client(proxy)
    with pytest.raises(openai.BadRequestError, match="embedding model"):
        await asyncio.to_thread(responses.responses.create, model=EMBED, input=QUESTION)
    with pytest.raises(openai.NotFoundError, match="not served by this deployment"):
        await asyncio.to_thread(responses.responses.create, model="llama3", input=QUESTION)


async def test_an_anthropic_error_body_is_anthropics(proxy: Proxy) -> None:
    async with (
        aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http,
        http.post(f"{proxy.url}/v1/messages", json={"model": CHAT}) as response,
    ):
        assert response.status == 401
        assert await response.json() == {
            "type": "error",
            "error": {
                "type": "authentication_error",
                "message": "missing API key: send the header 'Authorization: Bearer <key>'",
            },
        }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cutting_proxy() -> AsyncIterator[Proxy]:
    async with (
        simulator({"SIM_STREAM_CUT_AFTER": str(CUT_AFTER)}) as sim,
        serve_proxy(sim.url) as p,
    ):
        yield p


async def test_a_cut_responses_stream_ends_in_an_error_event(cutting_proxy: Proxy) -> None:
    client = openai_client(cutting_proxy)

    def stream() -> list[str]:
        seen: list[str] = []
        for event in client.responses.create(model=CHAT, input=QUESTION, stream=True):
            seen.append(event.type)
        return seen

    with pytest.raises(openai.APIError, match=r"mid-stream|before its final event"):
        await asyncio.to_thread(stream)


async def test_a_cut_anthropic_stream_ends_in_an_error_event(cutting_proxy: Proxy) -> None:
    client = anthropic_client(cutting_proxy)

    def stream() -> str:
        with client.messages.stream(model=CHAT, max_tokens=200, messages=MESSAGES) as s:
            return "".join(s.text_stream)

    with pytest.raises(anthropic.APIStatusError, match=r"mid-stream|before its final event"):
        await asyncio.to_thread(stream)


async def test_a_cut_stream_on_the_wire(cutting_proxy: Proxy) -> None:
    """The error event's exact framing: a named ``error`` event in each API's own shape."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    bodies: dict[str, dict[str, Any]] = {
        "/v1/responses": {"model": CHAT, "input": QUESTION, "stream": True},
        "/v1/messages": {"model": CHAT, "max_tokens": 100, "messages": MESSAGES, "stream": True},
    }
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT, headers=headers) as http:
        for path, body in bodies.items():
            async with http.post(f"{cutting_proxy.url}{path}", json=body) as response:
                raw = await response.read()
            last = raw.rstrip(b"\n").split(b"\n\n")[-1]
            event, data = last.split(b"\n", 1)
            assert event == b"event: error", raw[-300:]
            document = json.loads(data.removeprefix(b"data: "))
            if path == "/v1/messages":
                assert document["type"] == "error"
                assert document["error"]["type"] == "api_error"
            else:
                assert document["type"] == "error"
                assert document["code"] == "upstream_error"
                assert document["error"]["message"] == document["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/me"),
        ("POST", "/api/signout"),
        ("DELETE", "/api/user/keys/abc"),
        ("POST", "/api/experimental/web_search"),
        ("POST", "/api/experimental/web_fetch"),
        ("GET", "/api/experimental/model-recommendations"),
    ],
)
async def test_account_and_cloud_features_are_refused_never_forwarded(
    proxy: Proxy, sim: SimulatorProcess, method: str, path: str
) -> None:
    before = sim.logs().count(path)
    async with (
        aiohttp.ClientSession(timeout=CLIENT_TIMEOUT, headers=proxy.headers) as http,
        http.request(method, proxy.url + path, json={}) as response,
    ):
        assert response.status == 403
        assert "ollama.com account or cloud feature" in (await response.json())["error"]
    assert sim.logs().count(path) == before, "nothing reached Ollama"
