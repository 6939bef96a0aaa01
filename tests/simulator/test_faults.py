"""Fault injection and pacing driven by ``SIM_*`` variables, against real subprocesses."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterable, Mapping
from pathlib import Path
from typing import TypeVar

import aiohttp
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from proxy.testing.services import ServiceExited, SimulatorProcess
from proxy.testing.simulator import expected_text, expected_tokens, read_pull_log
from tests.clients import CLIENT_TIMEOUT, CLIENT_TIMEOUT_SECONDS

from .conftest import CHAT_MODEL, MakeSim

_T = TypeVar("_T")

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
CHAT: dict[str, object] = {"model": CHAT_MODEL, "messages": MESSAGES}


async def _pull(sim: SimulatorProcess, model: str = CHAT_MODEL) -> None:
    await ollama.AsyncClient(host=sim.url, timeout=CLIENT_TIMEOUT_SECONDS).pull(model)


async def _drain(stream: AsyncIterable[_T], into: list[_T]) -> None:
    async for item in stream:
        into.append(item)


async def _lines(
    sim: SimulatorProcess, path: str, body: Mapping[str, object]
) -> tuple[int, list[bytes], str]:
    """Status, the complete lines received, and how the body ended (``ok`` or the error type)."""
    lines: list[bytes] = []
    async with (
        aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session,
        session.post(sim.url + path, json=body) as resp,
    ):
        try:
            async for line in resp.content:
                lines.append(line)
        except aiohttp.ClientError as exc:
            return resp.status, lines, type(exc).__name__
    return resp.status, lines, "ok"


async def test_start_delay_postpones_readiness(make_sim: MakeSim) -> None:
    began = time.monotonic()
    sim = await make_sim({"SIM_START_DELAY": "0.6"})
    assert time.monotonic() - began >= 0.6
    assert "Listening on" in sim.logs()


async def test_sigterm_during_start_delay_exits_zero(make_sim: MakeSim) -> None:
    sim = await make_sim({"SIM_START_DELAY": "30"}, wait_ready=False)
    await asyncio.sleep(0.5)
    began = time.monotonic()
    await sim.astop()
    assert sim.returncode == 0
    assert time.monotonic() - began < 2


async def test_exit_at_start(make_sim: MakeSim) -> None:
    with pytest.raises(ServiceExited) as info:
        await make_sim({"SIM_EXIT_AT_START": "3"})
    assert info.value.returncode == 3
    assert "Error: listen tcp 127.0.0.1:" in info.value.logs
    assert "simulated start failure" in info.value.logs
    assert "Listening on" not in info.value.logs


async def test_pull_failures_http500_then_success(make_sim: MakeSim, tmp_path: Path) -> None:
    sim = await make_sim({"SIM_PULL_FAILURES": "2", "SIM_STATE_DIR": str(tmp_path)})
    for _ in range(2):
        status, lines, end = await _lines(sim, "/api/pull", {"model": CHAT_MODEL})
        assert status == 500
        assert end == "ok"
        assert "simulated registry failure" in json.loads(lines[0])["error"]
    status, lines, _ = await _lines(sim, "/api/pull", {"model": CHAT_MODEL})
    assert status == 200
    assert json.loads(lines[-1]) == {"status": "success"}
    log = read_pull_log(tmp_path)
    assert [(r["outcome"], r["reason"]) for r in log] == [
        ("failed", "http500"),
        ("failed", "http500"),
        ("success", None),
    ]
    assert log[-1]["downloaded"] is True
    assert log[-1]["model"] == CHAT_MODEL


async def test_pull_failure_cut_drops_the_connection(make_sim: MakeSim) -> None:
    sim = await make_sim({"SIM_PULL_FAILURES": "1", "SIM_PULL_FAILURE_MODE": "cut"})
    status, lines, end = await _lines(sim, "/api/pull", {"model": CHAT_MODEL})
    assert status == 200
    assert end == "ClientPayloadError"
    assert json.loads(lines[0]) == {"status": "pulling manifest"}
    assert len(lines) == 3
    assert all(b"error" not in line for line in lines)
    assert (
        await ollama.AsyncClient(host=sim.url, timeout=CLIENT_TIMEOUT_SECONDS).list()
    ).models == []


async def test_pull_failure_inband(make_sim: MakeSim) -> None:
    sim = await make_sim({"SIM_PULL_FAILURES": "2", "SIM_PULL_FAILURE_MODE": "inband"})
    client = ollama.AsyncClient(host=sim.url, timeout=CLIENT_TIMEOUT_SECONDS)
    with pytest.raises(ollama.ResponseError, match="max retries exceeded"):
        async for _ in await client.pull(CHAT_MODEL, stream=True):
            pass
    with pytest.raises(ollama.ResponseError) as info:
        await client.pull(CHAT_MODEL)  # stream: false → HTTP 500, like waitForStream
    assert info.value.status_code == 500
    assert (await client.pull(CHAT_MODEL)).status == "success"


async def test_pull_failures_survive_restart_with_state_dir(
    make_sim: MakeSim, tmp_path: Path
) -> None:
    env = {"SIM_PULL_FAILURES": "1", "SIM_STATE_DIR": str(tmp_path)}
    sim = await make_sim(env)
    with pytest.raises(ollama.ResponseError):
        await _pull(sim)
    await sim.arestart()
    await _pull(sim)  # the one failure was used up before the restart
    assert [r["outcome"] for r in read_pull_log(tmp_path)] == ["failed", "success"]


async def test_models_persist_across_restart(make_sim: MakeSim, tmp_path: Path) -> None:
    models = tmp_path / "models"
    state = tmp_path / "state"
    first = await make_sim({"SIM_STATE_DIR": str(state)}, models_dir=models)
    await _pull(first)
    await first.astop()
    assert (models / "manifests/registry.ollama.ai/library/smollm2/135m").is_file()
    second = await make_sim({"SIM_STATE_DIR": str(state)}, models_dir=models)
    client = ollama.AsyncClient(host=second.url, timeout=CLIENT_TIMEOUT_SECONDS)
    assert [m.model for m in (await client.list()).models] == [CHAT_MODEL]
    reply = await client.chat(model=CHAT_MODEL, messages=MESSAGES)
    assert reply.message.content == expected_text(CHAT_MODEL, MESSAGES, 12)
    await client.pull(CHAT_MODEL)
    assert [r["downloaded"] for r in read_pull_log(state)] == [True, False]


async def test_stream_cut_after(make_sim: MakeSim) -> None:
    sim = await make_sim({"SIM_STREAM_CUT_AFTER": "3"})
    await _pull(sim)
    status, lines, end = await _lines(sim, "/api/chat", CHAT)
    assert status == 200
    assert len(lines) == 3
    assert end == "ClientPayloadError"
    client = openai.AsyncOpenAI(
        base_url=f"{sim.url}/v1", api_key="x", max_retries=0, timeout=CLIENT_TIMEOUT_SECONDS
    )
    stream = await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True)
    received: list[object] = []
    with pytest.raises(openai.APIError):
        await _drain(stream, received)
    assert len(received) == 3
    status, lines, end = await _lines(sim, "/api/chat", {**CHAT, "stream": False})
    assert end == "ok"
    assert len(lines) == 1


async def test_stream_error_after(make_sim: MakeSim) -> None:
    sim = await make_sim({"SIM_STREAM_ERROR_AFTER": "2"})
    await _pull(sim)
    status, lines, end = await _lines(sim, "/api/generate", {"model": CHAT_MODEL, "prompt": "x"})
    assert status == 200
    assert end == "ok"
    assert len(lines) == 3
    assert json.loads(lines[-1]) == {
        "error": "an error was encountered while running the model: unexpected EOF"
    }
    client = ollama.AsyncClient(host=sim.url, timeout=CLIENT_TIMEOUT_SECONDS)
    with pytest.raises(ollama.ResponseError, match="unexpected EOF"):
        async for _ in await client.chat(model=CHAT_MODEL, messages=MESSAGES, stream=True):
            pass
    status, lines, end = await _lines(sim, "/v1/chat/completions", {**CHAT, "stream": True})
    events = [line for line in lines if line.strip()]
    assert end == "ok"
    assert len(events) == 3
    assert b"[DONE]" not in events[-1]
    assert json.loads(events[-1].removeprefix(b"data: "))["model"] == ""


async def test_crash_after_streams_one_chunk_then_dies_once(
    make_sim: MakeSim, tmp_path: Path
) -> None:
    env = {"SIM_CRASH_AFTER": "1", "SIM_STATE_DIR": str(tmp_path)}
    sim = await make_sim(env)
    await _pull(sim)
    client = ollama.AsyncClient(host=sim.url, timeout=CLIENT_TIMEOUT_SECONDS)
    await client.chat(model=CHAT_MODEL, messages=MESSAGES)  # request 1 runs normally
    status, lines, end = await _lines(sim, "/api/chat", CHAT)  # request 2 crashes mid-stream
    assert status == 200
    assert len(lines) == 1
    assert end != "ok"
    assert json.loads(lines[0])["message"]["content"] == expected_tokens(CHAT_MODEL, MESSAGES, 1)[0]
    async with asyncio.timeout(5):
        assert await sim.await_exit() == 1
    assert "panic: simulated runner crash" in sim.logs()
    await sim.astart()  # restarted with the marker present: no second crash
    for _ in range(3):
        await client.chat(model=CHAT_MODEL, messages=MESSAGES)


async def test_crash_after_zero_kills_a_non_streamed_request(make_sim: MakeSim) -> None:
    sim = await make_sim({"SIM_CRASH_AFTER": "0"})
    await _pull(sim)
    client = ollama.AsyncClient(host=sim.url, timeout=CLIENT_TIMEOUT_SECONDS)
    assert (await client.generate(model=CHAT_MODEL, prompt="")).done_reason == "load"  # not counted
    with pytest.raises(Exception) as info:  # noqa: PT011 - any transport error
        await client.generate(model=CHAT_MODEL, prompt="x")
    assert not isinstance(info.value, ollama.ResponseError)
    async with asyncio.timeout(5):
        assert await sim.await_exit() == 1


async def test_token_delay_paces_the_stream(make_sim: MakeSim) -> None:
    sim = await make_sim({"SIM_TOKEN_DELAY": "0.05", "SIM_NUM_TOKENS": "6"})
    await _pull(sim)
    client = ollama.AsyncClient(host=sim.url, timeout=CLIENT_TIMEOUT_SECONDS)
    stamps = []
    began = time.monotonic()
    async for _ in await client.generate(model=CHAT_MODEL, prompt="x", stream=True):
        stamps.append(time.monotonic() - began)
    assert len(stamps) == 7
    assert stamps[-1] >= 0.3
    assert stamps[0] < stamps[-1] - 0.2  # tokens arrive spread out, not in one burst


async def test_load_delay_and_keep_alive(make_sim: MakeSim) -> None:
    sim = await make_sim({"SIM_LOAD_DELAY": "0.3", "OLLAMA_KEEP_ALIVE": "0"})
    await _pull(sim)
    client = ollama.AsyncClient(host=sim.url, timeout=CLIENT_TIMEOUT_SECONDS)
    first = await client.generate(model=CHAT_MODEL, prompt="x")
    assert first.load_duration is not None
    assert first.load_duration >= 300_000_000
    assert (await client.ps()).models == []  # OLLAMA_KEEP_ALIVE=0 unloads after each request
    kept = await client.generate(model=CHAT_MODEL, prompt="x", keep_alive="1h")
    assert kept.load_duration is not None
    assert kept.load_duration >= 300_000_000
    warm = await client.generate(model=CHAT_MODEL, prompt="x")
    assert warm.load_duration is not None
    assert warm.load_duration < 100_000_000


async def test_extra_models_are_pullable(make_sim: MakeSim) -> None:
    sim = await make_sim({"SIM_EXTRA_MODELS": "tiny:1m=chat,myorg/emb:v2=embedding:16"})
    client = ollama.AsyncClient(host=sim.url, timeout=CLIENT_TIMEOUT_SECONDS)
    await client.pull("tiny:1m")
    await client.pull("myorg/emb:v2")
    names = sorted(m.model or "" for m in (await client.list()).models)
    assert names == ["myorg/emb:v2", "tiny:1m"]
    vectors = (await client.embed(model="myorg/emb:v2", input="x")).embeddings
    assert len(vectors[0]) == 16


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signals_exit_zero_promptly_mid_stream(
    make_sim: MakeSim, signum: signal.Signals
) -> None:
    sim = await make_sim({"SIM_TOKEN_DELAY": "0.5"})
    await _pull(sim)
    request = asyncio.create_task(_lines(sim, "/api/chat", CHAT))
    await asyncio.sleep(0.3)
    began = time.monotonic()
    sim.send_signal(signum)
    async with asyncio.timeout(3):
        assert await sim.await_exit() == 0
    assert time.monotonic() - began < 2
    await request
