"""Faults with the real ``ollama``: what the proxy does when the real thing dies, drains, starts,
or lacks a model it cannot pull (no registry is reachable from the test machines).

Each test runs its own ``python -m proxy serve`` (:class:`~proxy.testing.services.ProxyProcess`)
in front of the real executable; tests that may write to the models directory use a private
copy of it (:func:`~tests.real_ollama.support.private_models`).
"""

from __future__ import annotations

import http.client
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest

from proxy.testing.harness import http_json, wait_until
from proxy.testing.services import ProxyProcess
from tests.real_ollama.support import (
    API_KEY,
    CHAT_MODEL,
    EMBEDDING_MODEL,
    EXIT_TIMEOUT,
    READY_TIMEOUT,
    RealOllama,
    descendants,
    private_models,
    proxy,
    running,
    snapshot,
)

pytestmark = [
    pytest.mark.real_ollama,
    pytest.mark.slow,
    pytest.mark.timeout(300, func_only=True),
]

CLIENT_TIMEOUT = 60.0
"""One request through the proxy, generation included (SmolLM2 on 2 busy cores)."""
LONG = 300
"""Tokens asked for when a stream must still be running when something happens to it."""
DRAINED = 24
"""Tokens of the stream that must finish while the proxy drains."""
STORY = "Write a long story about a dragon who learns to sing."
MESSAGES = [{"role": "user", "content": STORY}]
READINESS_BOUND = 2.0
"""From ``ollama serve`` answering to ``/readyz`` 200, nothing to load (seconds): the proxy's
own start-up work (version poll, model listing) on a busy machine, with a wide margin."""
PRELOADED_BOUND = 60.0
"""The same with both models loaded before readiness (seconds)."""
POLL = 0.002


def _stream(
    server: ProxyProcess,
    path: str,
    body: dict[str, Any],
    *,
    after: int | None = None,
    action: Callable[[], object] | None = None,
) -> tuple[int, list[bytes]]:
    """POST ``body`` and read the streamed answer to its end: status and non-empty lines.

    ``action`` runs once ``after`` chunks (NDJSON lines or SSE ``data:`` lines) have arrived.
    """
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=CLIENT_TIMEOUT)
    headers = {"Content-Type": "application/json", **server.headers}
    try:
        conn.request("POST", path, body=json.dumps(body), headers=headers)
        response = conn.getresponse()
        lines: list[bytes] = []
        while line := response.readline():
            if line.strip():
                lines.append(line.strip())
                if action is not None and len(lines) == after:
                    action()
        return response.status, lines
    finally:
        conn.close()


def _sse(lines: list[bytes]) -> list[Any]:
    """The data of each SSE event: parsed JSON, or the text (``[DONE]``)."""
    data = [line.removeprefix(b"data: ") for line in lines if line.startswith(b"data: ")]
    return [json.loads(item) if item.startswith(b"{") else item.decode() for item in data]


def _restarted(server: ProxyProcess, dead: psutil.Process) -> psutil.Process:
    """Wait for a new Ollama child and ``/readyz`` 200 again; the new child."""

    def back() -> psutil.Process | None:
        child = server.ollama()
        if child is None or child.pid == dead.pid:
            return None
        return child if server.get("/readyz")[0] == 200 else None

    return wait_until(back, READY_TIMEOUT, "the proxy to restart Ollama and serve again")


def _gone(procs: list[psutil.Process]) -> bool:
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def test_kill_9_of_ollama_mid_stream(real_ollama: RealOllama, tmp_path: Path) -> None:
    models = private_models(real_ollama, tmp_path / "models")
    before = snapshot(models)
    with running(proxy(real_ollama, tmp_path, models=models)) as server:
        first = server.ollama()
        assert first is not None
        runners = first.children(recursive=True)

        # Native NDJSON: the lines that made it, then an error line in the stream's own framing.
        body = {"model": CHAT_MODEL, "messages": MESSAGES, "options": {"num_predict": LONG}}
        status, lines = _stream(
            server, "/api/chat", body, after=2, action=lambda: first.send_signal(signal.SIGKILL)
        )
        assert status == 200
        chunks = [json.loads(line) for line in lines]
        assert len(chunks) >= 3, chunks
        assert all(chunk.get("done") is False for chunk in chunks[:-1]), chunks
        assert set(chunks[-1]) == {"error"}, chunks[-1]
        assert chunks[-1]["error"], chunks[-1]

        second = _restarted(server, first)
        wait_until(lambda: _gone([first, *runners]), EXIT_TIMEOUT, "the dead Ollama's runners")

        # OpenAI SSE: the chunks that made it, then an error event, and no [DONE].
        body = {"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": LONG, "stream": True}
        status, lines = _stream(
            server,
            "/v1/chat/completions",
            body,
            after=2,
            action=lambda: second.send_signal(signal.SIGKILL),
        )
        assert status == 200
        events = _sse(lines)
        assert "[DONE]" not in events, events
        assert all(event.get("object") == "chat.completion.chunk" for event in events[:-1])
        error = events[-1]["error"]
        assert error["message"], error
        assert error["type"], error

        _restarted(server, second)
        client = openai.OpenAI(
            base_url=f"{server.url}/v1", api_key=API_KEY, timeout=CLIENT_TIMEOUT, max_retries=0
        )
        answer = client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=4)
        assert answer.choices[0].message.content

        names = [event["event"] for event in server.events()]
    assert names.count("ollama started") == 3, names
    assert "pulling model" not in names, "a restart must not pull what is present"
    assert snapshot(models) == before, "the models directory changed: models were re-created"


def test_sigterm_drains_a_stream_then_exits_0(real_ollama: RealOllama, tmp_path: Path) -> None:
    server = proxy(real_ollama, tmp_path, SHUTDOWN_GRACE="60")
    tree: list[psutil.Process] = []

    def terminate() -> None:
        tree.extend(descendants(server.pid))
        server.send_signal(signal.SIGTERM)

    server.start()
    try:
        body = {"model": CHAT_MODEL, "prompt": STORY, "options": {"num_predict": DRAINED}}
        status, lines = _stream(server, "/api/generate", body, after=1, action=terminate)
        exit_status = server.wait_exit(EXIT_TIMEOUT)
    finally:
        server.stop()
    assert status == 200
    chunks = [json.loads(line) for line in lines]
    assert chunks[-1]["done"] is True, chunks[-1]  # finished, not cut
    assert chunks[-1]["done_reason"] in {"length", "stop"}
    assert exit_status == 0, server.log_tail()
    assert tree, "ollama serve and a runner were running"
    assert _gone(tree), [p.pid for p in tree if not _gone([p])]


def _time_to_ready(server: ProxyProcess) -> float:
    """Seconds from the first answer of ``ollama serve`` (as this test sees it) to ``/readyz``."""
    server.spawn()
    try:

        def ollama_answers() -> float | None:
            server.check_running()
            return time.monotonic() if http_json(server.ollama_url + "/", timeout=1)[0] else None

        ollama_up = wait_until(ollama_answers, READY_TIMEOUT, "ollama serve to answer")
        while True:
            server.check_running()
            if server.get("/readyz", timeout=1)[0] == 200:
                return time.monotonic() - ollama_up
            if time.monotonic() - ollama_up > READY_TIMEOUT:
                pytest.fail(f"not ready {READY_TIMEOUT:g} s after Ollama answered")
            time.sleep(POLL)
    finally:
        server.stop()


def test_readiness_follows_ollama_closely(real_ollama: RealOllama, tmp_path: Path) -> None:
    bare = _time_to_ready(proxy(real_ollama, tmp_path / "bare", PRELOAD_MODELS="0"))
    loaded = _time_to_ready(proxy(real_ollama, tmp_path / "loaded"))
    print(f"readiness after ollama answered: {bare:.3f} s; with both models loaded {loaded:.3f} s")
    assert bare < READINESS_BOUND
    assert loaded < PRELOADED_BOUND


def test_a_model_that_cannot_be_pulled_fails_alone(real_ollama: RealOllama, tmp_path: Path) -> None:
    missing = "nope-model:1b"
    models = private_models(real_ollama, tmp_path / "models")  # the pull may write to it
    server = proxy(
        real_ollama,
        tmp_path,
        models=models,
        OLLAMA_CHAT_MODELS=f"{CHAT_MODEL},{missing}",
        OLLAMA_EMBEDDING_MODELS=EMBEDDING_MODEL,
    )
    with running(server):  # ready: degraded, but serving
        status, ready = server.get("/readyz")
        assert status == 200, ready
        assert ready["ready"] is True
        assert ready["status"] == "degraded", ready
        assert ready["models"][missing]["state"] == "failed", ready
        assert ready["models"][missing]["reason"], ready
        assert missing in ready["reason"], ready
        assert ready["models"][CHAT_MODEL]["state"] == "ready", ready

        client = openai.OpenAI(
            base_url=f"{server.url}/v1", api_key=API_KEY, timeout=CLIENT_TIMEOUT, max_retries=0
        )
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model=missing, messages=MESSAGES, max_tokens=4)
        assert refused.value.status_code == 503
        assert missing in refused.value.message
        answer = client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=4)
        assert answer.choices[0].message.content
        vectors = client.embeddings.create(model=EMBEDDING_MODEL, input="hello")
        assert len(vectors.data[0].embedding) == 384
    assert not (models / "manifests" / "registry.ollama.ai" / "library" / "nope-model").exists()
