"""Streams that do not end well: client disconnects, cut, failing or crashing upstreams."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import ollama
import openai
import psutil
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from proxy_support import API_KEY, CHAT, MESSAGES, PROMPT, Proxy, serve_proxy, simulator

from proxy.appkeys import ADMISSION
from proxy.testing.services import SimulatorProcess
from tests.clients import CLIENT_TIMEOUT, CLIENT_TIMEOUT_SECONDS

pytestmark = pytest.mark.asyncio(loop_scope="module")

CANCEL_DEADLINE = 0.1
TOKEN_DELAY = 0.05
SIM_GAVE_UP = "Cannot write to closing transport"  # the simulator's handler failing to write


def upstream_connections(port: int) -> int:
    """Established TCP connections from this process (the proxy) to ``port``."""
    return sum(
        1
        for c in psutil.Process().net_connections("tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


async def wait_for(predicate: object, deadline: float) -> float:
    """Seconds until ``predicate()`` holds; fails after ``deadline`` seconds."""
    started = time.monotonic()
    while not predicate():  # type: ignore[operator]
        elapsed = time.monotonic() - started
        assert elapsed < deadline, f"not within {deadline} s"
        await asyncio.sleep(0.002)
    return time.monotonic() - started


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def slow_sim() -> AsyncIterator[SimulatorProcess]:
    async with simulator({"SIM_TOKEN_DELAY": str(TOKEN_DELAY), "SIM_NUM_TOKENS": "400"}) as sim:
        yield sim


async def _assert_cancelled_upstream(sim: SimulatorProcess, proxy: Proxy, before: int) -> None:
    closed = await wait_for(lambda: upstream_connections(sim.port) == 0, CANCEL_DEADLINE)
    # The simulator notices at its next token write (every TOKEN_DELAY s) and stops generating.
    await wait_for(lambda: sim.logs().count(SIM_GAVE_UP) > before, CANCEL_DEADLINE + TOKEN_DELAY)
    await wait_for(lambda: proxy.app[ADMISSION].active == 0, CANCEL_DEADLINE)
    assert closed < CANCEL_DEADLINE


async def test_ndjson_client_disconnect_cancels_upstream(slow_sim: SimulatorProcess) -> None:
    async with (
        serve_proxy(slow_sim.url) as proxy,
        aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http,
    ):
        before = slow_sim.logs().count(SIM_GAVE_UP)
        response = await http.post(
            proxy.url + "/api/chat",
            json={"model": CHAT, "messages": MESSAGES},
            headers=proxy.headers,
        )
        await response.content.readline()
        await response.content.readline()
        assert upstream_connections(slow_sim.port) == 1
        response.close()
        await _assert_cancelled_upstream(slow_sim, proxy, before)


async def test_sse_client_disconnect_cancels_upstream(slow_sim: SimulatorProcess) -> None:
    async with serve_proxy(slow_sim.url) as proxy:
        before = slow_sim.logs().count(SIM_GAVE_UP)
        client = openai.AsyncOpenAI(
            base_url=f"{proxy.url}/v1",
            api_key=API_KEY,
            max_retries=0,
            timeout=CLIENT_TIMEOUT_SECONDS,
        )
        stream = await client.completions.create(model=CHAT, prompt=PROMPT, stream=True)
        received = 0
        async for _chunk in stream:
            received += 1
            if received == 2:
                break
        await stream.close()
        await _assert_cancelled_upstream(slow_sim, proxy, before)
        await client.close()


def _sse_data(body: bytes) -> list[bytes]:
    return [block[len(b"data: ") :] for block in body.split(b"\n\n") if block]


async def test_a_cut_stream_ends_with_an_error_in_its_framing() -> None:
    async with simulator({"SIM_STREAM_CUT_AFTER": "3"}) as sim, serve_proxy(sim.url) as proxy:
        async with aiohttp.ClientSession(headers=proxy.headers, timeout=CLIENT_TIMEOUT) as http:
            async with http.post(
                proxy.url + "/api/generate", json={"model": CHAT, "prompt": PROMPT}
            ) as response:
                assert response.status == 200
                lines = (await response.read()).splitlines()
            async with http.post(
                proxy.url + "/v1/chat/completions",
                json={"model": CHAT, "messages": MESSAGES, "stream": True},
            ) as response:
                events = _sse_data(await response.read())
        assert len(lines) == 4
        assert [json.loads(line)["done"] for line in lines[:3]] == [False] * 3
        assert "mid-stream" in json.loads(lines[-1])["error"]
        assert len(events) == 4
        assert b"[DONE]" not in events
        error = json.loads(events[-1])["error"]
        assert error["type"] == "api_error"
        assert "mid-stream" in error["message"]

        native = ollama.AsyncClient(
            host=proxy.url, headers=proxy.headers, timeout=CLIENT_TIMEOUT_SECONDS
        )
        with pytest.raises(ollama.ResponseError, match="mid-stream"):
            async for _part in await native.chat(CHAT, MESSAGES, stream=True):
                pass
        client = openai.OpenAI(
            base_url=f"{proxy.url}/v1",
            api_key=API_KEY,
            max_retries=0,
            timeout=CLIENT_TIMEOUT_SECONDS,
        )

        def consume() -> None:
            for _chunk in client.chat.completions.create(
                model=CHAT, messages=MESSAGES, stream=True
            ):
                pass

        with pytest.raises(openai.APIError, match="mid-stream"):
            await asyncio.to_thread(consume)


async def test_an_upstream_error_mid_stream_reaches_the_clients() -> None:
    async with simulator({"SIM_STREAM_ERROR_AFTER": "2"}) as sim, serve_proxy(sim.url) as proxy:
        native = ollama.AsyncClient(
            host=proxy.url, headers=proxy.headers, timeout=CLIENT_TIMEOUT_SECONDS
        )
        with pytest.raises(ollama.ResponseError) as caught:
            async for _part in await native.generate(CHAT, PROMPT, stream=True):
                pass
        assert caught.value.error  # Ollama's own in-band line, relayed as it was
        client = openai.AsyncOpenAI(
            base_url=f"{proxy.url}/v1",
            api_key=API_KEY,
            max_retries=0,
            timeout=CLIENT_TIMEOUT_SECONDS,
        )
        stream = await client.chat.completions.create(model=CHAT, messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError):  # Ollama sent no [DONE]: the proxy says so
            async for _chunk in stream:
                pass
        await client.close()


async def test_ollama_dying_mid_stream_and_before_an_answer() -> None:
    async with simulator({"SIM_CRASH_AFTER": "0"}) as sim, serve_proxy(sim.url) as proxy:
        native = ollama.AsyncClient(
            host=proxy.url, headers=proxy.headers, timeout=CLIENT_TIMEOUT_SECONDS
        )
        parts: list[ollama.ChatResponse] = []

        async def consume() -> None:
            async for part in await native.chat(CHAT, MESSAGES, stream=True):
                parts.append(part)

        with pytest.raises(ollama.ResponseError, match="mid-stream"):
            await consume()
        assert len(parts) == 1  # the chunk that made it, then the error
    async with simulator({"SIM_CRASH_AFTER": "0"}) as sim, serve_proxy(sim.url) as proxy:
        client = openai.AsyncOpenAI(
            base_url=f"{proxy.url}/v1",
            api_key=API_KEY,
            max_retries=0,
            timeout=CLIENT_TIMEOUT_SECONDS,
        )
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model=CHAT, messages=MESSAGES)
        assert caught.value.status_code == 503
        await client.close()


async def test_a_silent_upstream_mid_stream_is_cut_with_an_error() -> None:
    """No chunk for PROXY_REQUEST_TIMEOUT after the first: the idle timeout ends the stream."""

    async def stalls(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await response.write(b'{"model":"m","response":"a","done":false}\n')
        await asyncio.sleep(5)
        return response

    fake = web.Application()
    fake.router.add_post("/api/generate", stalls)
    async with (
        TestServer(fake, host="127.0.0.1") as upstream,
        serve_proxy(f"http://127.0.0.1:{upstream.port}", proxy_request_timeout=0.2) as proxy,
        aiohttp.ClientSession(headers=proxy.headers, timeout=CLIENT_TIMEOUT) as http,
    ):
        started = time.monotonic()
        async with http.post(
            proxy.url + "/api/generate", json={"model": CHAT, "prompt": PROMPT}
        ) as response:
            lines = (await response.read()).splitlines()
        assert time.monotonic() - started < 2
    assert len(lines) == 2
    assert "Ollama sent nothing for 0.2 s" in json.loads(lines[1])["error"]
