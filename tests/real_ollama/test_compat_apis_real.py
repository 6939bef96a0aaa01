"""Issue 17 with the real ``ollama serve`` 0.24.0: OpenAI's Responses API and Anthropic's Messages
API through ``python -m proxy serve``, read by their stock clients.

One proxy for the module (``smollm2:135m`` and ``all-minilm:l6-v2`` from the cached models,
only read). The ``openai`` client's ``responses.create`` (whole and streamed) and the
``anthropic`` client's ``messages.create`` and ``messages.stream`` (which authenticates with
``x-api-key``) get real text; an embedding model is a 400 in each API's shape. Last, the chat
model's runner is killed mid-stream on each API: real Ollama then ends the stream cleanly with no
further event (see :mod:`tests.real_ollama.conformance`), so it is the proxy that appends the
error event on which both clients raise.
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest
from anthropic.types import MessageParam

from proxy.testing.services import ProxyProcess
from tests.real_ollama.support import (
    API_KEY,
    CHAT_MODEL,
    EMBEDDING_MODEL,
    PROMPT,
    RealOllama,
    assert_real_text,
    kill_runner,
    metric,
    metrics,
    proxy,
    running,
)

pytestmark = [
    pytest.mark.real_ollama,
    pytest.mark.slow,
    pytest.mark.timeout(60, func_only=True),
]

CLIENT_TIMEOUT = 30.0
"""One client request, a model runner's restart included (SmolLM2 on 2 busy cores)."""
MAX_TOKENS = 5
"""Enough for real text, few enough to keep each generation under a second or two."""
LONG = 400
"""Tokens asked for by the streams whose runner is killed: still generating when it dies."""
CUT_AFTER = 3
"""Text deltas that arrive before the runner is killed."""
STORY = "Write a long story about a dragon who learns to sing."
MESSAGES: list[MessageParam] = [{"role": "user", "content": PROMPT}]
CUT_SHORT = r"before its final event"
"""What the proxy's error event says when the stream from Ollama ends without its last event."""


@pytest.fixture(scope="module")
def server(
    real_ollama: RealOllama, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    with running(proxy(real_ollama, tmp_path_factory.mktemp("real-compat"))) as process:
        yield process


@pytest.fixture(scope="module")
def oai(server: ProxyProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.url}/v1", api_key=API_KEY, timeout=CLIENT_TIMEOUT, max_retries=0
    )


@pytest.fixture(scope="module")
def claude(server: ProxyProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=server.url, api_key=API_KEY, timeout=CLIENT_TIMEOUT, max_retries=0
    )


def test_responses_whole_and_streamed(oai: openai.OpenAI) -> None:
    whole = oai.responses.create(model=CHAT_MODEL, input=PROMPT, max_output_tokens=MAX_TOKENS)
    assert whole.status == "completed"
    assert whole.model == CHAT_MODEL
    assert_real_text(whole.output_text)
    assert whole.usage is not None
    assert whole.usage.output_tokens == MAX_TOKENS

    events = list(
        oai.responses.create(
            model=CHAT_MODEL, input=PROMPT, max_output_tokens=MAX_TOKENS, stream=True
        )
    )
    types = [event.type for event in events]
    assert types[0] == "response.created", types
    assert types[-1] == "response.completed", types
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) > 1, f"one delta is not a stream: {deltas}"
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == "".join(deltas)
    assert_real_text(completed.response.output_text)


def test_anthropic_messages_create_and_stream(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model=CHAT_MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES)
    assert message.model == CHAT_MODEL
    assert message.stop_reason == "max_tokens"
    assert message.content[0].type == "text"
    assert_real_text(message.content[0].text)

    with claude.messages.stream(
        model=CHAT_MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1, f"one piece is not a stream: {pieces}"
    assert final.content[0].type == "text"
    assert final.content[0].text == "".join(pieces)
    assert_real_text(final.content[0].text)
    assert final.usage.output_tokens == MAX_TOKENS


def test_an_embedding_model_is_a_4xx_in_each_apis_shape(
    oai: openai.OpenAI, claude: anthropic.Anthropic, server: ProxyProcess
) -> None:
    with pytest.raises(openai.BadRequestError) as responses_error:
        oai.responses.create(model=EMBEDDING_MODEL, input=PROMPT, max_output_tokens=MAX_TOKENS)
    body = responses_error.value.body  # the SDK hands over OpenAI's {"error": {...}} object
    assert isinstance(body, dict), body
    assert body["type"] == "invalid_request_error", body
    assert body["param"] == "model", body
    assert f"model {EMBEDDING_MODEL!r} is an embedding model" in body["message"], body

    with pytest.raises(anthropic.BadRequestError) as messages_error:
        claude.messages.create(model=EMBEDDING_MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES)
    body = messages_error.value.body
    assert isinstance(body, dict), body
    assert body["type"] == "error", body
    assert set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == "invalid_request_error", body
    assert f"model {EMBEDDING_MODEL!r} is an embedding model" in body["error"]["message"], body

    wrong_key = anthropic.Anthropic(
        base_url=server.url, api_key="not-the-key-0123456789", timeout=CLIENT_TIMEOUT, max_retries=0
    )
    with pytest.raises(anthropic.AuthenticationError) as auth_error:
        wrong_key.messages.create(model=CHAT_MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES)
    assert auth_error.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


def test_a_runner_killed_mid_stream_ends_a_responses_stream_in_an_error_event(
    oai: openai.OpenAI, server: ProxyProcess
) -> None:
    before = metrics(server)
    seen: list[str] = []

    def read() -> None:
        stream = oai.responses.create(
            model=CHAT_MODEL, input=STORY, max_output_tokens=LONG, stream=True
        )
        for event in stream:
            seen.append(event.type)
            if seen.count("response.output_text.delta") == CUT_AFTER:
                kill_runner(server, CHAT_MODEL)

    with pytest.raises(openai.APIError, match=CUT_SHORT) as raised:
        read()
    assert not isinstance(raised.value, openai.APIStatusError), "the status was 200"
    assert seen.count("response.output_text.delta") >= CUT_AFTER, seen
    assert "response.completed" not in seen, seen
    after = metrics(server)
    route = "/v1/responses"
    errors = "proxy_stream_errors_total"
    assert metric(after, errors, route=route) - metric(before, errors, route=route) == 1


def test_a_runner_killed_mid_stream_ends_a_messages_stream_in_an_error_event(
    claude: anthropic.Anthropic, server: ProxyProcess
) -> None:
    before = metrics(server)
    pieces: list[str] = []

    def read() -> None:
        with claude.messages.stream(
            model=CHAT_MODEL, max_tokens=LONG, messages=[{"role": "user", "content": STORY}]
        ) as stream:
            for piece in stream.text_stream:
                pieces.append(piece)
                if len(pieces) == CUT_AFTER:
                    kill_runner(server, CHAT_MODEL)

    with pytest.raises(anthropic.APIStatusError, match=CUT_SHORT) as raised:
        read()
    assert raised.value.body["type"] == "error", raised.value.body  # type: ignore[index]
    assert raised.value.body["error"]["type"] == "api_error", raised.value.body  # type: ignore[index]
    assert len(pieces) >= CUT_AFTER, pieces
    after = metrics(server)
    route = "/v1/messages"
    errors = "proxy_stream_errors_total"
    assert metric(after, errors, route=route) - metric(before, errors, route=route) == 1
