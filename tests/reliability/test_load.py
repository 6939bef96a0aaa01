"""Load through the real proxy subprocess: 200 concurrent requests, streamed and whole, chat and
embeddings, both APIs, with the real ``openai`` and ``ollama`` clients and raw HTTP. Every chunk
is checked against the simulator's deterministic output (nothing lost, duplicated, reordered or
crossed between requests); the proxy's memory, sockets and file descriptors stay bounded."""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import ollama
import openai
import psutil
import pytest

from proxy.testing.simulator import expected_tokens

from .conftest import MAIN_CONCURRENCY
from .helpers import (
    API_KEY,
    CHAT,
    EMBED,
    TALLY,
    ProxyProcess,
    StreamMismatch,
    check_embedding,
    check_ndjson,
    check_sse_chat,
    established,
    metric_value,
    tcp_connections,
    user_messages,
    wait_until,
)

pytestmark = pytest.mark.reliability

CONCURRENCY = 200
"""Requests in flight at once."""
NUM_TOKENS = 12
"""The simulator's default SIM_NUM_TOKENS."""
MEASURED_RUNS = 3
"""Runs measured after the warm-up run."""
RUN_TIMEOUT = 90.0
"""One run of CONCURRENCY requests must finish within this (seconds)."""
RSS_MARGIN = 6 * 1024 * 1024
"""The proxy's RSS may grow this much over a measured run after the warm-up (bytes)."""
FD_MARGIN = 6
"""Open file descriptors of the proxy beyond its pooled upstream sockets (count)."""
SETTLE_TIMEOUT = 15.0
"""How long the proxy may take to close client sockets and release slots after a run."""

Check = Callable[[aiohttp.ClientSession, "Clients", int, str], Awaitable[int]]


class Clients:
    """The real client libraries, pointed at the proxy."""

    def __init__(self, proxy: ProxyProcess) -> None:
        self.url = proxy.url
        self.openai = openai.AsyncOpenAI(
            base_url=f"{proxy.url}/v1", api_key=API_KEY, max_retries=0, timeout=RUN_TIMEOUT
        )
        self.ollama = ollama.AsyncClient(
            host=proxy.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=RUN_TIMEOUT
        )

    async def close(self) -> None:
        await self.openai.close()
        await self.ollama.close()


async def _sse_chat_raw(session: aiohttp.ClientSession, c: Clients, i: int, tag: str) -> int:
    messages = user_messages(f"load {tag} {i}: tell me about rivers")
    body = {"model": CHAT, "messages": messages, "stream": True}
    async with session.post(f"{c.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        events: list[str] = []
        async for line in resp.content:
            if line.startswith(b"data:"):
                events.append(line[5:].strip().decode())
    return check_sse_chat(events, messages, NUM_TOKENS)


async def _openai_chat(_s: aiohttp.ClientSession, c: Clients, i: int, tag: str) -> int:
    messages = user_messages(f"load {tag} {i}: a whole answer")
    completion = await c.openai.chat.completions.create(model=CHAT, messages=messages)  # type: ignore[arg-type]
    expected = "".join(_tokens(messages))
    if completion.choices[0].message.content != expected:
        raise StreamMismatch(f"request {i}: {completion.choices[0].message.content!r}")
    return 1


async def _ndjson_chat_raw(session: aiohttp.ClientSession, c: Clients, i: int, tag: str) -> int:
    messages = user_messages(f"load {tag} {i}: native chat")
    body = {"model": CHAT, "messages": messages}
    async with session.post(f"{c.url}/api/chat", json=body) as resp:
        assert resp.status == 200, await resp.text()
        lines = [line async for line in resp.content]
    return check_ndjson(lines, messages, NUM_TOKENS, chat=True)


async def _openai_embeddings(_s: aiohttp.ClientSession, c: Clients, i: int, tag: str) -> int:
    texts = [f"load {tag} {i} first", f"load {tag} {i} second"]
    result = await c.openai.embeddings.create(model=EMBED, input=texts)
    for item, text in zip(result.data, texts, strict=True):
        check_embedding(item.embedding, text)
    return 1


async def _ndjson_generate_raw(session: aiohttp.ClientSession, c: Clients, i: int, tag: str) -> int:
    prompt = f"load {tag} {i}: once upon a time"
    async with session.post(
        f"{c.url}/api/generate", json={"model": CHAT, "prompt": prompt}
    ) as resp:
        assert resp.status == 200, await resp.text()
        lines = [line async for line in resp.content]
    return check_ndjson(lines, prompt, NUM_TOKENS, chat=False)


async def _openai_completion_stream(_s: aiohttp.ClientSession, c: Clients, i: int, tag: str) -> int:
    prompt = f"load {tag} {i}: completion"
    stream = await c.openai.completions.create(model=CHAT, prompt=prompt, stream=True)
    texts = [chunk.choices[0].text async for chunk in stream]
    if texts != [*_tokens(prompt), ""]:
        raise StreamMismatch(f"request {i}: {texts!r}")
    return len(texts)


async def _native_embed_raw(session: aiohttp.ClientSession, c: Clients, i: int, tag: str) -> int:
    text = f"load {tag} {i}: embed me"
    async with session.post(f"{c.url}/api/embed", json={"model": EMBED, "input": text}) as resp:
        assert resp.status == 200, await resp.text()
        document = await resp.json()
    check_embedding(document["embeddings"][0], text)
    return 1


async def _ollama_chat_stream(_s: aiohttp.ClientSession, c: Clients, i: int, tag: str) -> int:
    messages = user_messages(f"load {tag} {i}: ollama client")
    parts = [
        part.message.content
        async for part in await c.ollama.chat(model=CHAT, messages=messages, stream=True)
    ]
    expected = [*_tokens(messages), ""]
    if parts != expected:
        raise StreamMismatch(f"request {i}: {parts!r} != {expected!r}")
    return len(parts)


def _tokens(prompt: Any) -> list[str]:
    return expected_tokens(CHAT, prompt, NUM_TOKENS)


CHECKS: tuple[Check, ...] = (
    _sse_chat_raw,
    _openai_chat,
    _ndjson_chat_raw,
    _openai_embeddings,
    _ndjson_generate_raw,
    _openai_completion_stream,
    _native_embed_raw,
    _ollama_chat_stream,
)


async def _run(proxy: ProxyProcess, tag: str) -> tuple[int, list[str]]:
    """CONCURRENCY requests at once; (chunks checked, failures)."""
    clients = Clients(proxy)
    connector = aiohttp.TCPConnector(limit=0)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    start = asyncio.Event()

    async def one(i: int) -> int:
        await start.wait()
        return await CHECKS[i % len(CHECKS)](session, clients, i, tag)

    try:
        async with aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=RUN_TIMEOUT),
        ) as session:
            tasks = [asyncio.create_task(one(i)) for i in range(CONCURRENCY)]
            start.set()
            results = await asyncio.wait_for(
                asyncio.gather(*tasks, return_exceptions=True), RUN_TIMEOUT
            )
    finally:
        await clients.close()
    failures = [f"{i}: {r!r}" for i, r in enumerate(results) if isinstance(r, BaseException)]
    chunks = sum(r for r in results if isinstance(r, int))
    return chunks, failures


def _snapshot(proxy: ProxyProcess) -> dict[str, int]:
    process = psutil.Process(proxy.pid)
    upstream = tcp_connections(proxy.pid, proxy.ollama_port)
    return {
        "rss": process.memory_info().rss,
        "fds": process.num_fds(),
        "threads": process.num_threads(),
        "upstream": len(upstream),
        "upstream_established": len(established(upstream)),
        "close_wait": sum(
            1 for c in process.net_connections(kind="tcp") if c.status == psutil.CONN_CLOSE_WAIT
        ),
    }


def _settled(proxy: ProxyProcess) -> bool:
    """No client connection left on the proxy's port, no slot held, nothing queued."""
    clients = tcp_connections(proxy.pid, proxy.port, remote=False)
    if clients:
        return False
    request = urllib.request.Request(
        f"{proxy.url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    return (
        metric_value(text, "proxy_requests_in_flight") == 0
        and metric_value(text, "proxy_requests_queued") == 0
    )


def _stream_errors(proxy: ProxyProcess) -> int:
    return sum(1 for e in proxy.events() if e.get("event") == "upstream stream failed")


async def test_200_concurrent_mixed_requests_lose_nothing_and_leak_nothing(
    main_proxy: ProxyProcess,
) -> None:
    assert CONCURRENCY <= MAIN_CONCURRENCY
    proxy = main_proxy
    proxy.wait_ready()
    tag = uuid.uuid4().hex[:8]

    warm_chunks, failures = await _run(proxy, f"{tag}-warm")
    assert not failures, failures[:5]
    await asyncio.to_thread(wait_until, lambda: _settled(proxy), SETTLE_TIMEOUT, "settling")
    before = _snapshot(proxy)
    stream_errors = _stream_errors(proxy)

    started = time.monotonic()
    chunks = 0
    for round_ in range(MEASURED_RUNS):
        got, failures = await _run(proxy, f"{tag}-{round_}")
        assert not failures, failures[:5]
        chunks += got
    elapsed = (time.monotonic() - started) / MEASURED_RUNS
    await asyncio.to_thread(wait_until, lambda: _settled(proxy), SETTLE_TIMEOUT, "settling")
    after = _snapshot(proxy)

    TALLY.load_requests += (1 + MEASURED_RUNS) * CONCURRENCY
    TALLY.load_chunks += warm_chunks + chunks
    print(f"\n{CONCURRENCY} concurrent requests in {elapsed:.2f}s; before {before}; after {after}")

    assert before["upstream"] >= CONCURRENCY // 2, "the requests really overlapped upstream"
    assert _stream_errors(proxy) == stream_errors, "no stream failed mid-way"
    assert after["rss"] - before["rss"] <= RSS_MARGIN, (before, after)
    assert after["upstream"] <= CONCURRENCY, "pooled upstream sockets are bounded by concurrency"
    assert after["upstream"] == after["upstream_established"], "no half-closed upstream socket"
    assert after["close_wait"] == 0, "every socket closed by its peer was closed by the proxy"
    assert after["fds"] - after["upstream"] <= before["fds"] - before["upstream"] + FD_MARGIN, (
        before,
        after,
    )
    assert after["threads"] <= before["threads"] + 2, (before, after)
    sim = proxy.ollama()
    assert sim is not None
    assert (
        len(established(tcp_connections(sim.pid, proxy.ollama_port, remote=False)))
        <= (after["upstream_established"])
    ), "the simulator holds no connection the proxy has given up"
