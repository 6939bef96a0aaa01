"""Faults through the real proxy subprocess, from the simulator's fault injection and from real
signals: Ollama SIGKILLed mid-stream, pulls that fail, a slow start, streams cut by Ollama, clients
that vanish mid-stream, and SIGTERM under load. Every affected client gets an error it can see
(in its own framing), never a silently truncated answer; the proxy recovers by itself."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import openai
import pytest

from proxy.testing.simulator import expected_tokens

from .helpers import (
    API_KEY,
    CHAT,
    EMBED,
    EXIT_TIMEOUT,
    TALLY,
    ProxyProcess,
    alive,
    check_embedding,
    check_ndjson,
    check_sse_chat,
    established,
    sims_using,
    start_proxy,
    tcp_connections,
    user_messages,
)

pytestmark = pytest.mark.reliability

STREAM_TIMEOUT = 30.0
"""Any one streamed request of these tests (seconds)."""
RECOVERY_TIMEOUT = 30.0
"""Ollama killed → /readyz 200 again (seconds)."""
CANCEL_LIMIT = 0.1
"""A client gone mid-stream → the upstream connection closed, on both ends (seconds)."""
DISCONNECT_MS: list[float] = []


# -- clients that record what they saw ------------------------------------------------------------


class Outcome:
    """What one streaming client saw: the content of each chunk, and how the stream ended."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.contents: list[str] = []
        self.error: str | None = None
        """The error the client saw (an in-band error frame or an exception), if any."""
        self.completed = False
        """The stream ended with its proper end marker ([DONE] / done: true)."""
        self.started = asyncio.Event()

    def chunk(self, content: str, *, min_chunks: int = 2) -> None:
        self.contents.append(content)
        if len(self.contents) >= min_chunks:
            self.started.set()

    def __repr__(self) -> str:
        return (
            f"Outcome({self.name}: {len(self.contents)} chunks, completed={self.completed}, "
            f"error={self.error!r})"
        )


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


async def raw_sse_chat(session: aiohttp.ClientSession, url: str, out: Outcome, text: str) -> None:
    """POST /v1/chat/completions stream=true; SSE read line by line."""
    body = {"model": CHAT, "messages": user_messages(text), "stream": True}
    try:
        async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200, await resp.text()
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip().decode()
                if data == "[DONE]":
                    out.completed = True
                    continue
                event = json.loads(data)
                if "error" in event:
                    out.error = event["error"]["message"]
                    continue
                if event["choices"] and event["choices"][0]["finish_reason"] is None:
                    out.chunk(event["choices"][0]["delta"].get("content", ""))
    except aiohttp.ClientError as exc:
        out.error = out.error or f"transport: {exc!r}"


async def raw_ndjson(
    session: aiohttp.ClientSession, url: str, out: Outcome, text: str, *, chat: bool = True
) -> None:
    """POST /api/chat (or /api/generate); NDJSON read line by line."""
    path = "/api/chat" if chat else "/api/generate"
    body: dict[str, Any] = {"model": CHAT}
    body.update({"messages": user_messages(text)} if chat else {"prompt": text})
    try:
        async with session.post(f"{url}{path}", json=body) as resp:
            assert resp.status == 200, await resp.text()
            async for line in resp.content:
                if not line.strip():
                    continue
                obj = json.loads(line)
                if "error" in obj:
                    out.error = obj["error"]
                elif obj.get("done") is True:
                    out.completed = True
                else:
                    out.chunk(obj["message"]["content"] if chat else obj["response"])
    except aiohttp.ClientError as exc:
        out.error = out.error or f"transport: {exc!r}"


async def openai_chat(url: str, out: Outcome, text: str) -> None:
    """The openai client, streaming; it must raise on a failed stream."""
    async with openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=STREAM_TIMEOUT
    ) as client:
        try:
            stream = await client.chat.completions.create(
                model=CHAT,
                messages=user_messages(text),  # type: ignore[arg-type]
                stream=True,
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].finish_reason is None:
                    out.chunk(chunk.choices[0].delta.content or "")
            out.completed = True
        except Exception as exc:  # the type is checked by the tests
            out.error = f"{type(exc).__name__}: {exc}"


async def ollama_generate(url: str, out: Outcome, text: str) -> None:
    """The ollama client, streaming /api/generate; it must raise on a failed stream."""
    client = ollama.AsyncClient(host=url, headers=_headers(), timeout=STREAM_TIMEOUT)
    try:
        async for part in await client.generate(model=CHAT, prompt=text, stream=True):
            if part.done:
                out.completed = True
            else:
                out.chunk(part.response)
    except (ollama.ResponseError, ollama.RequestError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        await client.close()


def assert_clean_failure(out: Outcome, prompt: Any, num_tokens: int) -> None:
    """The client saw an error, not a completed stream, after an exact prefix of the tokens."""
    assert out.error, f"{out}: a failed stream must surface as an error"
    assert not out.completed, f"{out}: a failed stream must not look complete"
    tokens = expected_tokens(CHAT, prompt, num_tokens)
    assert out.contents == tokens[: len(out.contents)], f"{out}: not a prefix of the output"
    assert 0 < len(out.contents) < len(tokens), out


async def wait_started(outcomes: list[Outcome], timeout: float = STREAM_TIMEOUT) -> None:
    await asyncio.wait_for(asyncio.gather(*(o.started.wait() for o in outcomes)), timeout)


async def _ready(proxy: ProxyProcess) -> None:
    await asyncio.to_thread(proxy.wait_ready)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        headers=_headers(), timeout=aiohttp.ClientTimeout(total=STREAM_TIMEOUT)
    ) as client:
        yield client


@pytest.fixture
def proxies(tmp_path: Path) -> Any:
    """Factory ``proxies(name, **env)``; every proxy is stopped (tree killed) at the end."""
    started: list[ProxyProcess] = []

    def start(name: str, **env: str) -> ProxyProcess:
        proxy = start_proxy(tmp_path / name, name, **env)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


class _ReadyzWatch:
    """Records (time, status, ollama state) of /readyz every 20 ms from a thread of its own.

    A thread, so that clients blocking the test's event loop cannot hide a short 503 window.
    """

    def __init__(self, proxy: ProxyProcess) -> None:
        self.seen: list[tuple[float, int, str]] = []
        self._url = f"{proxy.url}/readyz"
        self._headers = proxy.headers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _ReadyzWatch:
        self._thread.start()
        while not self.seen:  # the first sample is taken before the caller goes on
            time.sleep(0.005)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                request = urllib.request.Request(self._url, headers=self._headers)
                with urllib.request.urlopen(request, timeout=2) as resp:
                    status, body = resp.status, json.load(resp)
            except urllib.error.HTTPError as exc:
                status, body = exc.code, json.load(exc)
            except OSError:
                self.seen.append((time.monotonic(), 0, "unreachable"))
                self._stop.wait(0.02)
                continue
            self.seen.append((time.monotonic(), status, body["ollama"]["state"]))
            self._stop.wait(0.02)


# -- Ollama SIGKILLed mid-stream ------------------------------------------------------------------

KILL_TOKENS = 50
KILL_TOKEN_DELAY = 0.04


async def test_ollama_sigkill_mid_stream_fails_every_client_cleanly_then_recovers(
    proxies: Callable[..., ProxyProcess], session: aiohttp.ClientSession
) -> None:
    proxy = proxies(
        "kill-ollama", SIM_TOKEN_DELAY=str(KILL_TOKEN_DELAY), SIM_NUM_TOKENS=str(KILL_TOKENS)
    )
    await _ready(proxy)
    sim = proxy.wait_ollama()
    pulls_before = proxy.pulls()
    assert sum(p["downloaded"] for p in pulls_before) == 2

    texts = {name: f"killed {name}" for name in ("openai", "sse", "ndjson", "ollama")}
    outcomes = {name: Outcome(name) for name in texts}
    clients = [
        openai_chat(proxy.url, outcomes["openai"], texts["openai"]),
        raw_sse_chat(session, proxy.url, outcomes["sse"], texts["sse"]),
        raw_ndjson(session, proxy.url, outcomes["ndjson"], texts["ndjson"]),
        ollama_generate(proxy.url, outcomes["ollama"], texts["ollama"]),
    ]
    tasks = [asyncio.create_task(c) for c in clients]
    await wait_started(list(outcomes.values()))
    with _ReadyzWatch(proxy) as watch:
        killed_at = time.monotonic()
        os.kill(sim.pid, signal.SIGKILL)
        await asyncio.wait_for(asyncio.gather(*tasks), STREAM_TIMEOUT)
        await _ready(proxy)
    seen = watch.seen

    for name in ("openai", "sse", "ndjson"):
        assert_clean_failure(outcomes[name], user_messages(texts[name]), KILL_TOKENS)
    assert_clean_failure(outcomes["ollama"], texts["ollama"], KILL_TOKENS)
    assert outcomes["openai"].error.startswith("APIError"), outcomes["openai"]
    assert not outcomes["sse"].error.startswith("transport"), "an SSE error event, in band"
    assert not outcomes["ndjson"].error.startswith("transport"), "an NDJSON error line, in band"
    assert outcomes["ollama"].error.startswith("ResponseError"), outcomes["ollama"]

    recovered_at = time.monotonic()
    statuses = [status for t, status, _ in seen if t >= killed_at]
    assert 503 in statuses, f"/readyz flipped to 503 after the kill: {seen[:5]}"
    body = proxy.get("/readyz")[1]
    assert body["ollama"]["restarts"] == 1, body

    new_sim = proxy.wait_ollama()
    assert new_sim.pid != sim.pid
    assert not alive(sim.pid)
    # The next requests succeed, streamed and whole, with the right content.
    after = Outcome("after")
    await raw_sse_chat(session, proxy.url, after, "after the restart")
    assert after.completed, after
    assert after.error is None, after
    assert after.contents == expected_tokens(CHAT, user_messages("after the restart"), KILL_TOKENS)
    async with session.post(
        f"{proxy.url}/api/embed", json={"model": EMBED, "input": "after"}
    ) as resp:
        assert resp.status == 200
        check_embedding((await resp.json())["embeddings"][0], "after")
    assert proxy.pulls() == pulls_before, "no model pulled (let alone downloaded) again"
    TALLY.fault("Ollama SIGKILL mid-stream", f"4 clients, ready in {recovered_at - killed_at:.1f}s")


# -- pull failures, slow start, streams cut by Ollama ---------------------------------------------

CUT_AFTER = 3
PULL_FAILURES = 3
START_DELAY = 1.0


async def test_slow_start_and_failing_pulls_end_ready_and_cut_streams_fail_cleanly(
    proxies: Callable[..., ProxyProcess], session: aiohttp.ClientSession
) -> None:
    proxy = proxies(
        "flaky",
        SIM_START_DELAY=str(START_DELAY),
        SIM_PULL_FAILURES=str(PULL_FAILURES),
        SIM_PULL_FAILURE_MODE="cut",
        SIM_STREAM_CUT_AFTER=str(CUT_AFTER),
        PULL_RETRIES="5",
    )
    started = time.monotonic()
    with _ReadyzWatch(proxy) as watch:
        await _ready(proxy)
    seen = watch.seen
    ready_after = time.monotonic() - started
    states = {state for _, status, state in seen if status == 503}
    assert "starting" in states, f"/readyz said 503 starting during the slow start: {seen[:3]}"
    assert ready_after >= START_DELAY

    pulls = proxy.pulls()
    failed = [p for p in pulls if p["outcome"] == "failed"]
    assert len(failed) == PULL_FAILURES, pulls
    assert all(p["reason"] == "cut" for p in failed), pulls
    succeeded = [p for p in pulls if p["outcome"] == "success"]
    assert sorted(p["model"] for p in succeeded if p["downloaded"]) == sorted([CHAT, EMBED]), (
        "each model downloaded exactly once"
    )

    # Every streamed response is cut by Ollama after CUT_AFTER chunks.
    outcomes = [Outcome(n) for n in ("openai", "sse", "ndjson", "generate", "ollama")]
    await asyncio.gather(
        openai_chat(proxy.url, outcomes[0], "cut openai"),
        raw_sse_chat(session, proxy.url, outcomes[1], "cut sse"),
        raw_ndjson(session, proxy.url, outcomes[2], "cut ndjson"),
        raw_ndjson(session, proxy.url, outcomes[3], "cut generate", chat=False),
        ollama_generate(proxy.url, outcomes[4], "cut ollama"),
    )
    prompts: list[Any] = [
        user_messages("cut openai"),
        user_messages("cut sse"),
        user_messages("cut ndjson"),
        "cut generate",
        "cut ollama",
    ]
    for out, prompt in zip(outcomes, prompts, strict=True):
        assert_clean_failure(out, prompt, 12)
        # The role chunk counts as one of the SSE events the simulator sent.
        assert len(out.contents) <= CUT_AFTER, out
    assert outcomes[0].error.startswith("APIError"), outcomes[0]
    for out in outcomes[1:4]:
        assert not out.error.startswith("transport"), f"{out}: an in-band error, in its framing"
    assert outcomes[4].error.startswith("ResponseError"), outcomes[4]

    # Whole answers are unaffected.
    async with session.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": CHAT, "messages": user_messages("whole")},
    ) as resp:
        assert resp.status == 200
        content = (await resp.json())["choices"][0]["message"]["content"]
    assert content == "".join(expected_tokens(CHAT, user_messages("whole"), 12))
    TALLY.fault("pull failures + slow start", f"ready in {ready_after:.1f}s")
    TALLY.fault("stream cut by Ollama", "5 clients")


# -- a client that disconnects mid-stream ---------------------------------------------------------


def _open_stream(port: int, path: str, body: dict[str, Any]) -> socket.socket:
    """Send a streaming request on a raw socket and read until the first body chunk arrived."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=STREAM_TIMEOUT)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    received = b""
    while b"\r\n\r\n" not in received or len(received.split(b"\r\n\r\n", 1)[1]) < 16:
        piece = sock.recv(65536)
        assert piece, f"the proxy closed the stream early: {received!r}"
        received += piece
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    return sock


def _gone_after(
    pid: int, sim_pid: int, ollama_port: int, local_port: int, start: float
) -> tuple[float, float]:
    """Seconds from ``start`` until the proxy's upstream socket on ``local_port`` and the
    simulator's end of it are no longer established."""
    proxy_gone = sim_gone = 0.0
    deadline = start + 5.0
    while time.perf_counter() < deadline and not (proxy_gone and sim_gone):
        now = time.perf_counter() - start
        if not proxy_gone and not any(
            c.laddr.port == local_port for c in established(tcp_connections(pid, ollama_port))
        ):
            proxy_gone = now
        if not sim_gone and not any(
            c.raddr.port == local_port
            for c in established(tcp_connections(sim_pid, ollama_port, remote=False))
        ):
            sim_gone = now
        time.sleep(0.002)
    return proxy_gone or float("inf"), sim_gone or float("inf")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": CHAT, "messages": user_messages("bye"), "stream": True}),
        ("/api/generate", {"model": CHAT, "prompt": "bye"}),
        ("/api/chat", {"model": CHAT, "messages": user_messages("bye")}),
    ],
    ids=["sse", "ndjson-generate", "ndjson-chat"],
)
def test_client_disconnect_mid_stream_closes_the_upstream_within_100ms(
    proxies: Callable[..., ProxyProcess], path: str, body: dict[str, Any]
) -> None:
    proxy = proxies("disconnect", SIM_TOKEN_DELAY="0.05", SIM_NUM_TOKENS="200")
    proxy.wait_ready()
    sim = proxy.wait_ollama()
    before = {c.laddr.port for c in established(tcp_connections(proxy.pid, proxy.ollama_port))}
    sock = _open_stream(proxy.port, path, body)
    during = {c.laddr.port for c in established(tcp_connections(proxy.pid, proxy.ollama_port))}
    new = during - before
    assert len(new) == 1, f"one upstream connection carries the stream: {before} -> {during}"
    (local_port,) = new
    assert any(
        c.raddr.port == local_port
        for c in established(tcp_connections(sim.pid, proxy.ollama_port, remote=False))
    )

    start = time.perf_counter()
    sock.close()
    proxy_gone, sim_gone = _gone_after(proxy.pid, sim.pid, proxy.ollama_port, local_port, start)

    assert proxy_gone <= CANCEL_LIMIT, f"the proxy closed its upstream after {proxy_gone:.3f}s"
    assert sim_gone <= CANCEL_LIMIT, f"the simulator saw the close after {sim_gone:.3f}s"
    # The proxy stays healthy and logs the disconnect as a client-side event.
    status, _ = proxy.get("/readyz")
    assert status == 200
    DISCONNECT_MS.append(max(proxy_gone, sim_gone) * 1000)
    TALLY.fault(
        "client disconnect",
        f"{len(DISCONNECT_MS)} streams, upstream closed in <= {max(DISCONNECT_MS):.0f} ms",
    )


# -- SIGTERM under load ---------------------------------------------------------------------------

TERM_GRACE = 2.0
TERM_TOKEN_DELAY = 0.05
TERM_LONG_TOKENS = 100
"""Long streams last ~5 s: longer than the grace, so they are cut at shutdown."""
TERM_SHORT_TOKENS = 8
"""Short streams last ~0.4 s: they finish within the grace."""
EXIT_MARGIN = 1.5
"""After the grace: cancelling the rest, stopping Ollama, exiting (seconds)."""


async def test_sigterm_under_load_finishes_or_fails_cleanly_and_exits_0(
    proxies: Callable[..., ProxyProcess], session: aiohttp.ClientSession
) -> None:
    proxy = proxies(
        "sigterm",
        SHUTDOWN_GRACE=str(TERM_GRACE),
        PROXY_MAX_CONCURRENCY="64",
        SIM_TOKEN_DELAY=str(TERM_TOKEN_DELAY),
        SIM_NUM_TOKENS=str(TERM_LONG_TOKENS),
    )
    await _ready(proxy)
    sim = proxy.wait_ollama()

    async def short_sse(i: int) -> tuple[str, Any]:
        messages = user_messages(f"short {i}")
        body = {"model": CHAT, "messages": messages, "stream": True, "max_tokens": 8}
        async with session.post(f"{proxy.url}/v1/chat/completions", json=body) as resp:
            raw = await resp.read()
        events = [
            line[5:].strip().decode() for line in raw.splitlines() if line.startswith(b"data:")
        ]
        return "short-sse", check_sse_chat(events, messages, TERM_SHORT_TOKENS)

    async def short_ndjson(i: int) -> tuple[str, Any]:
        body = {"model": CHAT, "prompt": f"short {i}", "options": {"num_predict": 8}}
        async with session.post(f"{proxy.url}/api/generate", json=body) as resp:
            lines = (await resp.read()).splitlines()
        return "short-ndjson", check_ndjson(lines, f"short {i}", TERM_SHORT_TOKENS, chat=False)

    long_outcomes = [Outcome(f"long-{i}") for i in range(8)]

    async def long_stream(i: int) -> tuple[str, Any]:
        out = long_outcomes[i]
        if i % 2:
            await raw_sse_chat(session, proxy.url, out, f"long {i}")
        else:
            await raw_ndjson(session, proxy.url, out, f"long {i}")
        return "long", out

    tasks = [asyncio.create_task(short_sse(i)) for i in range(8)]
    tasks += [asyncio.create_task(short_ndjson(i)) for i in range(8)]
    tasks += [asyncio.create_task(long_stream(i)) for i in range(len(long_outcomes))]
    await wait_started(long_outcomes)
    term_at = time.monotonic()
    proxy.popen.send_signal(signal.SIGTERM)
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    code = await asyncio.to_thread(proxy.popen.wait, EXIT_TIMEOUT)
    exit_after = time.monotonic() - term_at

    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures
    for i, out in enumerate(long_outcomes):
        prompt = user_messages(f"long {i}")
        assert_clean_failure(out, prompt, TERM_LONG_TOKENS)
    assert code == 0, f"exit status {code}: {proxy.log_tail()}"
    assert exit_after <= TERM_GRACE + EXIT_MARGIN, (
        f"exited {exit_after:.1f}s after SIGTERM: in-flight requests got more than "
        f"SHUTDOWN_GRACE={TERM_GRACE:g}s"
    )
    assert not alive(sim.pid), "Ollama stopped with the proxy"
    assert not sims_using(proxy.models_dir), "no orphaned Ollama"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
    events = [e.get("event") for e in proxy.events()]
    assert "signal received; shutting down" in events
    assert "stopped" in events
    TALLY.fault(
        "SIGTERM under load", f"16 finished, 8 cut with an error, exit 0 in {exit_after:.1f}s"
    )


async def test_sigterm_with_zero_grace_cancels_in_flight_streams_at_once(
    proxies: Callable[..., ProxyProcess], session: aiohttp.ClientSession
) -> None:
    proxy = proxies(
        "sigterm-0",
        SHUTDOWN_GRACE="0",
        SIM_TOKEN_DELAY=str(TERM_TOKEN_DELAY),
        SIM_NUM_TOKENS=str(TERM_LONG_TOKENS),
    )
    await _ready(proxy)
    outcomes = [Outcome("zero-grace-sse"), Outcome("zero-grace-ndjson"), Outcome("openai")]
    tasks = [
        asyncio.create_task(raw_sse_chat(session, proxy.url, outcomes[0], "zero sse")),
        asyncio.create_task(raw_ndjson(session, proxy.url, outcomes[1], "zero ndjson")),
        asyncio.create_task(openai_chat(proxy.url, outcomes[2], "zero openai")),
    ]
    await wait_started(outcomes)
    term_at = time.monotonic()
    proxy.popen.send_signal(signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(*tasks), STREAM_TIMEOUT)
    code = await asyncio.to_thread(proxy.popen.wait, EXIT_TIMEOUT)
    exit_after = time.monotonic() - term_at
    assert code == 0
    assert exit_after <= EXIT_MARGIN, f"SHUTDOWN_GRACE=0 still drained for {exit_after:.1f}s"
    assert_clean_failure(outcomes[0], user_messages("zero sse"), TERM_LONG_TOKENS)
    assert_clean_failure(outcomes[1], user_messages("zero ndjson"), TERM_LONG_TOKENS)
    assert_clean_failure(outcomes[2], user_messages("zero openai"), TERM_LONG_TOKENS)
    assert not sims_using(proxy.models_dir)
    TALLY.fault("SIGTERM, SHUTDOWN_GRACE=0", f"exit 0 in {exit_after:.1f}s")
