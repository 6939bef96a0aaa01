"""Conformance: the simulator answers as the real ``ollama serve`` it claims to be (0.24.0).

Every request of :data:`~tests.real_ollama.conformance.CORPUS` goes to a real ``ollama serve``
(the cached models, in a directory of its own) and to the simulator (the same model names
pulled); their status codes, content types, framing, JSON key sets and error shapes must agree
(see :mod:`tests.real_ollama.conformance` for what is compared). A second test kills the real
model runner in the middle of a stream on every streaming API and holds the simulator's
``SIM_STREAM_ERROR_AFTER`` to what real Ollama then sends. The simulator's intentional
differences are listed in :mod:`proxy.testing.simulator`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import psutil
import pytest
from anthropic.types import MessageParam

from proxy.testing.harness import http_json
from proxy.testing.services import ServiceProcess, SimulatorProcess
from proxy.testing.simulator import VERSION
from tests.real_ollama.conformance import (
    CHAT_MODEL,
    CORPUS,
    EMBEDDING_MODEL,
    MAX_TOKENS,
    Case,
    Observation,
    differences,
    observe,
)
from tests.real_ollama.support import RealOllama, ollama_server, private_models

pytestmark = [
    pytest.mark.real_ollama,
    pytest.mark.slow,
    # The corpus generates ~40 short answers on the real model: a few minutes on 2 busy cores.
    pytest.mark.timeout(900, func_only=True),
]

STREAM_FAILS_AFTER = 3
"""Chunks of a stream that arrive before its model runner dies."""
LONG = 400
"""Tokens asked for in the runner-failure streams: they must still be generating when it dies."""
STORY = "Write a long story about a dragon who learns to sing."
SIMULATOR_ENV = {"SIM_PULL_DELAY": "0"}
CLIENT_TIMEOUT = 120.0


def _pulled(sim: SimulatorProcess) -> SimulatorProcess:
    for model in (CHAT_MODEL, EMBEDDING_MODEL):
        status, body = http_json(
            sim.url + "/api/pull", method="POST", body={"model": model, "stream": False}
        )
        assert status == 200, body
    return sim


@pytest.fixture(scope="module")
def real_server(
    real_ollama: RealOllama, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    work = tmp_path_factory.mktemp("conformance-real")
    models = private_models(real_ollama, work / "models")  # the corpus copies and deletes
    with ollama_server(real_ollama, models, work / "ollama.log") as server:
        yield server


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(SIMULATOR_ENV) as sim:
        yield _pulled(sim)


def _report(failures: dict[str, list[str]], total: int) -> str:
    lines = [f"{len(failures)} of {total} requests answered differently by the simulator:"]
    for name, found in failures.items():
        lines.append(f"  {name}:")
        lines.extend(f"    {line}" for line in found)
    return "\n".join(lines)


def test_the_simulator_claims_the_real_version(real_server: ServiceProcess) -> None:
    status, body = http_json(real_server.url + "/api/version")
    assert status == 200, body
    assert body == {"version": VERSION}


def test_the_simulator_answers_the_corpus_as_real_ollama_does(
    real_server: ServiceProcess, simulator: SimulatorProcess
) -> None:
    failures: dict[str, list[str]] = {}
    started = time.monotonic()
    for case in CORPUS:
        real = observe(real_server.url, case)
        sim = observe(simulator.url, case)
        found = differences(real, sim, case)
        if found:
            failures[case.name] = found
    print(f"conformance: {len(CORPUS)} requests in {time.monotonic() - started:.1f} s")
    assert not failures, _report(failures, len(CORPUS))


STREAMS = (
    Case(
        "chat",
        "POST",
        "/api/chat",
        {
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": STORY}],
            "options": {"num_predict": LONG},
        },
    ),
    Case(
        "generate",
        "POST",
        "/api/generate",
        {"model": CHAT_MODEL, "prompt": STORY, "options": {"num_predict": LONG}},
    ),
    Case(
        "oai-chat",
        "POST",
        "/v1/chat/completions",
        {
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": STORY}],
            "max_tokens": LONG,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    Case(
        "oai-completion",
        "POST",
        "/v1/completions",
        {"model": CHAT_MODEL, "prompt": STORY, "max_tokens": LONG, "stream": True},
    ),
    Case(
        "responses",
        "POST",
        "/v1/responses",
        {"model": CHAT_MODEL, "input": STORY, "max_output_tokens": LONG, "stream": True},
    ),
    Case(
        "messages",
        "POST",
        "/v1/messages",
        {
            "model": CHAT_MODEL,
            "max_tokens": LONG,
            "stream": True,
            "messages": [{"role": "user", "content": STORY}],
        },
    ),
)


def _kill_runners(server: ServiceProcess) -> None:
    """SIGKILL every model runner of ``ollama serve`` (its children); the server lives on."""
    for child in psutil.Process(server.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def test_a_runner_dying_mid_stream_looks_the_same(
    real_server: ServiceProcess, tmp_path: Path
) -> None:
    failures: dict[str, list[str]] = {}
    env = {**SIMULATOR_ENV, "SIM_STREAM_ERROR_AFTER": str(STREAM_FAILS_AFTER)}
    with SimulatorProcess(env, models_dir=tmp_path / "models") as failing:
        _pulled(failing)
        for case in STREAMS:
            real = observe(
                real_server.url,
                case,
                after_chunks=STREAM_FAILS_AFTER,
                action=lambda: _kill_runners(real_server),
            )
            _assert_cut_short(case, real)
            found = differences(real, observe(failing.url, case), case)
            if found:
                failures[case.name] = found
    assert not failures, _report(failures, len(STREAMS))


def _assert_cut_short(case: Case, real: Observation) -> None:
    """The real stream did fail (the kill came before the end), cleanly, with status 200."""
    assert real.status == 200, (case.name, real)
    assert real.framing in {"ndjson", "sse"}, (case.name, real.framing)
    last = real.body[-1]
    if case.path.startswith("/api/"):
        assert last == {
            "error": "=an error was encountered while running the model: unexpected EOF"
        }
    else:
        assert "[DONE]" not in str(real.body), (case.name, real.body)
        assert "message_stop" not in str(real.body), (case.name, real.body)
        assert "response.completed" not in str(real.body), (case.name, real.body)


@pytest.mark.parametrize("backend", ["real", "simulator"])
def test_the_stock_clients_read_both_new_apis(
    backend: str, real_server: ServiceProcess, simulator: SimulatorProcess
) -> None:
    """The ``openai`` Responses client and the ``anthropic`` client, streamed and not, read real
    Ollama's answers as they read the simulator's."""
    url = real_server.url if backend == "real" else simulator.url
    oai = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=CLIENT_TIMEOUT)
    whole = oai.responses.create(model=CHAT_MODEL, input=STORY, max_output_tokens=MAX_TOKENS)
    assert whole.status == "completed"
    assert whole.output_text
    with oai.responses.stream(
        model=CHAT_MODEL, input=STORY, max_output_tokens=MAX_TOKENS
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) != ""

    claude = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=CLIENT_TIMEOUT)
    messages: list[MessageParam] = [{"role": "user", "content": STORY}]
    message = claude.messages.create(model=CHAT_MODEL, max_tokens=MAX_TOKENS, messages=messages)
    assert message.stop_reason == "max_tokens"
    assert message.content[0].type == "text"
    with claude.messages.stream(
        model=CHAT_MODEL, max_tokens=MAX_TOKENS, messages=messages
    ) as streamed:
        text = "".join(streamed.text_stream)
        final_message = streamed.get_final_message()
    assert text
    assert final_message.usage.output_tokens == MAX_TOKENS
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="nope", max_tokens=MAX_TOKENS, messages=messages)
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model="nope", input=STORY)
