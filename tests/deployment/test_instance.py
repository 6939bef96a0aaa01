"""The deployment package in an emulated 3-process UbiOps instance, with the real proxy and the
Ollama simulator: readiness, streaming, batches, embeddings, errors, a proxy crash, shutdown."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from proxy.testing.harness import wait_until
from proxy.testing.simulator import expected_embedding, expected_text
from proxy.testing.ubiops_instance import GENERIC_ERROR, UbiOpsInstance
from tests.deployment.conftest import PACKAGE_DIR, sim_env

pytestmark = pytest.mark.slow

START_DELAY = 1.5
TOKEN_DELAY = 0.02
NUM_TOKENS = 12
STARTED_TIMEOUT = 30.0
REQUEST_TIMEOUT = 20.0
RECOVERY_TIMEOUT = 30.0
EXIT_TIMEOUT = 15.0

CHAT_MODEL = "smollm2:135m"
EMBEDDING_MODEL = "all-minilm:l6-v2"
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


def _chat(*, stream: bool, content: str = "Why is the sky blue?", **extra: Any) -> dict[str, Any]:
    return {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
        **extra,
    }


class _ReadyzWatch:
    """Polls the proxy's /readyz from the test; remembers the last time it was not ready."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/readyz"
        self.last_not_ready = 0.0

    def ready(self) -> bool:
        probe_start = time.monotonic()
        try:
            with urllib.request.urlopen(self.url, timeout=2) as response:
                ok = bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            ok = False
        if not ok:
            self.last_not_ready = probe_start
        return ok

    def until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready() and time.monotonic() < deadline:
            time.sleep(0.02)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return sim_env(
        tmp_path_factory.mktemp("models"),
        SIM_START_DELAY=str(START_DELAY),
        SIM_TOKEN_DELAY=str(TOKEN_DELAY),
        SIM_NUM_TOKENS=str(NUM_TOKENS),
    )


@pytest.fixture(scope="module")
def started(env: dict[str, str]) -> Iterator[tuple[UbiOpsInstance, _ReadyzWatch]]:
    watch = _ReadyzWatch(int(env["PROXY_PORT"]))
    watcher = threading.Thread(target=watch.until_ready, args=(STARTED_TIMEOUT,), daemon=True)
    with UbiOpsInstance(PACKAGE_DIR, processes=3, env=env) as instance:
        watcher.start()
        instance.wait_started(STARTED_TIMEOUT)
        watcher.join(STARTED_TIMEOUT)
        yield instance, watch


@pytest.fixture
def instance(started: tuple[UbiOpsInstance, _ReadyzWatch]) -> UbiOpsInstance:
    return started[0]


def test_every_process_waits_for_the_proxy_to_be_ready(
    started: tuple[UbiOpsInstance, _ReadyzWatch],
) -> None:
    instance, watch = started
    assert watch.last_not_ready > 0, "the simulator's start delay was observed"
    assert len(instance.started_at) == 3
    for process_id, at in enumerate(instance.started_at):
        assert at > watch.last_not_ready, f"process {process_id} started before the proxy was ready"
    first = instance.batch([_chat(stream=False) for _ in range(3)], timeout=REQUEST_TIMEOUT)
    assert all(result.ok for result in first), [result.error for result in first]


def test_stream_relays_each_chunk_as_it_arrives(instance: UbiOpsInstance) -> None:
    arrivals: list[float] = []
    request = _chat(stream=True, stream_options={"include_usage": True})
    result = instance.request(
        json.dumps(request),
        timeout=REQUEST_TIMEOUT,
        on_update=lambda _t, _text: arrivals.append(time.monotonic()),
    )
    assert result.ok, result.error
    texts = [text for _, text in result.updates]
    chunks = [ChatCompletionChunk.model_validate_json(text) for text in texts]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == expected_text(CHAT_MODEL, request["messages"], NUM_TOKENS)
    assert chunks[-1].usage is not None, "stream_options.include_usage is passed through"
    assert result.output == "[" + ",".join(texts) + "]", "the result is the chunks, verbatim"
    assert [json.loads(t) for t in texts] == json.loads(result.output)
    # Relayed as they came, not at the end: the updates span the token delays.
    times = [t for t, _ in result.updates]
    assert times == sorted(times)
    assert times[-1] - times[0] >= (NUM_TOKENS - 2) * TOKEN_DELAY * 0.5
    assert arrivals[-1] - arrivals[0] >= (NUM_TOKENS - 2) * TOKEN_DELAY * 0.5


@pytest.mark.parametrize(
    ("payload", "delta", "last"),
    [
        (
            {"model": CHAT_MODEL, "input": MESSAGES[0]["content"]},
            "response.output_text.delta",
            "response.completed",
        ),
        (
            {
                "endpoint": "/v1/messages",
                "model": CHAT_MODEL,
                "max_tokens": 64,
                "messages": MESSAGES,
            },
            "content_block_delta",
            "message_stop",
        ),
    ],
    ids=["responses", "anthropic-messages"],
)
def test_responses_and_anthropic_streams_through_a_ubiops_request(
    instance: UbiOpsInstance, payload: dict[str, Any], delta: str, last: str
) -> None:
    result = instance.request(json.dumps({**payload, "stream": True}), timeout=REQUEST_TIMEOUT)
    assert result.ok, result.error
    events = [json.loads(text) for _, text in result.updates]
    assert events == json.loads(result.output)
    assert events[-1]["type"] == last, "relayed up to and including the last event"
    pieces = [e["delta"] for e in events if e["type"] == delta]
    text = "".join(p if isinstance(p, str) else p["text"] for p in pieces)
    assert text == expected_text(CHAT_MODEL, MESSAGES, NUM_TOKENS)


def test_non_stream_chat_and_embeddings(instance: UbiOpsInstance) -> None:
    chat = instance.request(_chat(stream=False), timeout=REQUEST_TIMEOUT)
    assert chat.ok, chat.error
    completion = ChatCompletion.model_validate_json(chat.output)
    assert completion.choices[0].message.content == expected_text(CHAT_MODEL, MESSAGES, NUM_TOKENS)
    assert chat.updates == []

    for model in (EMBEDDING_MODEL, f"ubiops-deployment/dep/v1/{EMBEDDING_MODEL}"):
        result = instance.request(
            json.dumps({"model": model, "input": "hello"}), timeout=REQUEST_TIMEOUT
        )
        assert result.ok, result.error
        embedding = CreateEmbeddingResponse.model_validate_json(result.output)
        expected = expected_embedding(EMBEDDING_MODEL, "hello")
        assert embedding.data[0].embedding == pytest.approx(expected, abs=1e-6)


def test_batch_of_mixed_requests_is_spread_over_processes(instance: UbiOpsInstance) -> None:
    items: list[Any] = []
    for i in range(20):
        kind = i % 4
        if kind == 0:
            items.append(_chat(stream=False, content=f"question {i}"))
        elif kind == 1:
            items.append(json.dumps(_chat(stream=True, content=f"question {i}")))
        elif kind == 2:
            items.append({"model": CHAT_MODEL, "prompt": f"Once upon a time {i}"})
        else:
            items.append(json.dumps({"model": EMBEDDING_MODEL, "input": [f"text {i}", "b"]}))
    results = instance.batch(items, timeout=REQUEST_TIMEOUT * 4)
    assert all(result.ok for result in results), [r.error for r in results if not r.ok]
    assert len({result.process_id for result in results}) > 1
    for i, result in enumerate(results):
        if i % 4 == 1:
            assert len(result.updates) >= NUM_TOKENS
            content = "".join(
                c.choices[0].delta.content or ""
                for c in map(
                    ChatCompletionChunk.model_validate_json, (t for _, t in result.updates)
                )
                if c.choices
            )
            assert content == expected_text(
                CHAT_MODEL, [{"role": "user", "content": f"question {i}"}], NUM_TOKENS
            )
        elif i % 4 == 3:
            assert len(json.loads(result.output)["data"]) == 2


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        (
            {"model": "llama3", "messages": MESSAGES},
            ["'llama3' is not served", "available models: smollm2:135m, all-minilm:l6-v2"],
        ),
        ("{not json", ["not valid JSON"]),
        ("[]", ["must be a JSON object"]),
        ({"messages": MESSAGES}, ["`model` is missing", "smollm2:135m"]),
        ({"model": EMBEDDING_MODEL, "messages": MESSAGES}, ["is an embedding model"]),
        (
            {"endpoint": "/v1/embeddings", "model": CHAT_MODEL, "input": "x"},
            ["is a chat model", f"models here: {EMBEDDING_MODEL}"],
        ),
        (
            {"endpoint": "/api/chat", "model": CHAT_MODEL, "messages": MESSAGES},
            ["'endpoint' field must be one of"],
        ),
        ({"model": "gpt-oss:120b-cloud", "input": "x"}, ["ollama.com cloud model"]),
    ],
)
def test_bad_requests_give_a_clear_public_error(
    instance: UbiOpsInstance, data: Any, fragments: list[str]
) -> None:
    result = instance.request(data, timeout=REQUEST_TIMEOUT)
    assert result.error is not None
    for fragment in fragments:
        assert fragment in result.error


def _descendants(pids: list[int]) -> list[psutil.Process]:
    found: list[psutil.Process] = []
    for pid in pids:
        found += psutil.Process(pid).children(recursive=True)
    return found


def _proxy_of(instance: UbiOpsInstance) -> psutil.Process | None:
    for child in psutil.Process(instance.pids[0]).children():
        try:
            if child.cmdline()[-2:] == ["proxy", "serve"]:
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_killed_proxy_is_restarted_and_stop_leaves_no_orphans(tmp_path: Path) -> None:
    env = sim_env(tmp_path, SIM_START_DELAY="1.0", SIM_NUM_TOKENS=str(NUM_TOKENS))
    instance = UbiOpsInstance(PACKAGE_DIR, processes=3, env=env)
    instance.start()
    tree: list[psutil.Process] = []
    try:
        instance.wait_started(STARTED_TIMEOUT)
        proxy = _proxy_of(instance)
        assert proxy is not None
        assert instance.request(_chat(stream=False), timeout=REQUEST_TIMEOUT).ok

        first_tree = proxy.children(recursive=True)
        assert first_tree, "the proxy runs Ollama"
        os.kill(proxy.pid, signal.SIGKILL)
        wait_until(lambda: _gone(proxy), EXIT_TIMEOUT, "the proxy to die")
        failed = instance.request(_chat(stream=True), timeout=REQUEST_TIMEOUT)
        assert failed.error is not None
        assert failed.error != GENERIC_ERROR
        assert "model server" in failed.error

        errors: list[str] = []

        def recovered() -> bool:
            result = instance.request(_chat(stream=True), timeout=REQUEST_TIMEOUT)
            if result.error is not None:
                errors.append(result.error)
            return result.ok

        wait_until(recovered, RECOVERY_TIMEOUT, "requests to succeed after the restart")
        # The client cannot reach the restarting proxy, then the proxy says what it waits for.
        assert all(e and e != GENERIC_ERROR for e in errors), errors
        wait_until(
            lambda: all(_gone(p) for p in first_tree), EXIT_TIMEOUT, "the killed proxy's Ollama"
        )
        restarted = _proxy_of(instance)
        assert restarted is not None
        assert restarted.pid != proxy.pid
        results = instance.batch([_chat(stream=False)] * 6, timeout=REQUEST_TIMEOUT)
        assert all(result.ok for result in results)

        tree = _descendants(instance.pids)
        assert any("ollama-sim" in " ".join(p.cmdline()) for p in tree), "ollama runs"
    finally:
        workers = [psutil.Process(pid) for pid in instance.pids]
        instance.stop()
    wait_until(
        lambda: all(_gone(p) for p in [*tree, *workers]), EXIT_TIMEOUT, "every process to exit"
    )
