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
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from proxy_support import API_KEY, CHAT, MESSAGES, PROMPT, Proxy, serve_proxy, simulator

from proxy.appkeys import ADMISSION, METRICS
from proxy.testing.services import SimulatorProcess
from tests.clients import CLIENT_TIMEOUT, CLIENT_TIMEOUT_SECONDS

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN_DELAY = 0.05
"""SIM_TOKEN_DELAY of the slow simulator: its 400-token streams would run for 20 s."""
CANCEL_DEADLINE = 1.0
"""How soon a client's disconnect must close the upstream stream: a twentieth of what is left of
it, and room for a loaded machine (0.1 s failed at 0.103 s under a parallel test run)."""
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


_HOLD = 1.0
"""How long the fake Ollama below keeps a stream's body open after its last event."""
_USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
_ENDS: dict[str, tuple[str, bytes]] = {
    "/v1/chat/completions": (
        "data: [DONE]",
        b'data: {"id":"c","object":"chat.completion.chunk","model":"%s","choices":[{"index":0,'
        b'"delta":{"content":"Hi"}}]}\n\ndata: {"id":"c","object":"chat.completion.chunk",'
        b'"model":"%s","choices":[],"usage":' + json.dumps(_USAGE).encode() + b"}\n\n"
        b"data: [DONE]\n\n",
    ),
    "/v1/responses": (
        "event: response.completed",
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
        b'"delta":"Hi"}\n\nevent: response.completed\ndata: {"type":"response.completed",'
        b'"response":{"model":"%s","status":"completed","usage":{"input_tokens":5,'
        b'"output_tokens":2,"total_tokens":7}}}\n\n',
    ),
    "/v1/messages": (
        "event: message_stop",
        b'event: message_start\ndata: {"type":"message_start","message":{"model":"%s",'
        b'"usage":{"input_tokens":5,"output_tokens":0}}}\n\nevent: message_delta\n'
        b'data: {"type":"message_delta","usage":{"output_tokens":2}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
    ),
}


async def _complete_then_hold(request: web.Request) -> web.StreamResponse:
    """A whole stream, then the body held open: Ollama's end of body comes after the client's
    close."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    body = _ENDS[request.path][1]
    await response.write(body.replace(b"%s", CHAT.encode()))
    await asyncio.sleep(_HOLD)
    return response


@pytest.mark.parametrize("path", list(_ENDS))
async def test_a_client_that_closes_at_the_streams_end_had_a_whole_answer(path: str) -> None:
    fake = web.Application()
    for route in _ENDS:
        fake.router.add_post(route, _complete_then_hold)
    body = {"model": CHAT, "stream": True, "max_tokens": 8, "messages": MESSAGES, "input": "Hi"}
    async with (
        TestServer(fake, host="127.0.0.1") as upstream,
        serve_proxy(f"http://127.0.0.1:{upstream.port}") as proxy,
        aiohttp.ClientSession(headers=proxy.headers, timeout=CLIENT_TIMEOUT) as http,
    ):
        with structlog.testing.capture_logs() as events:
            response = await http.post(proxy.url + path, json=body)
            assert response.status == 200
            async for line in response.content:  # as the openai client does at [DONE]
                if line.decode().strip() == _ENDS[path][0]:
                    break
            await response.content.readline()  # the last event's data line
            response.close()
            await wait_for(lambda: any(e["event"] == "request" for e in events), 2 * _HOLD)
    (access,) = [e for e in events if e["event"] == "request"]
    assert access["status"] == 200, access
    assert "error" not in access, access
    assert (access["prompt_tokens"], access["completion_tokens"]) == (5, 2), access


async def test_the_openai_client_closing_at_done_is_a_whole_answer_in_the_metrics() -> None:
    fake = web.Application()
    fake.router.add_post("/v1/chat/completions", _complete_then_hold)
    async with (
        TestServer(fake, host="127.0.0.1") as upstream,
        serve_proxy(f"http://127.0.0.1:{upstream.port}") as proxy,
    ):
        client = openai.AsyncOpenAI(
            base_url=proxy.url + "/v1", api_key=API_KEY, timeout=CLIENT_TIMEOUT_SECONDS
        )
        stream = await client.chat.completions.create(
            model=CHAT,
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = [chunk.usage async for chunk in stream if chunk.usage is not None]
        assert [u.completion_tokens for u in usage] == [2]
        await client.close()
        registry = proxy.app[METRICS].registry
        tokens = {"model": CHAT, "key": "default"}
        answered = {**tokens, "route": "/v1/chat/completions", "status": "200"}
        await wait_for(
            lambda: registry.get_sample_value("proxy_requests_total", answered) == 1, 2 * _HOLD
        )
        assert registry.get_sample_value("proxy_completion_tokens_total", tokens) == 2
        assert registry.get_sample_value("proxy_prompt_tokens_total", tokens) == 5
