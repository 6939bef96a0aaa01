"""The real ``openai`` Python client against the simulator's ``/v1`` API."""

from __future__ import annotations

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from proxy.testing.services import SimulatorProcess
from proxy.testing.simulator import (
    expected_embedding,
    expected_text,
    expected_tokens,
    prompt_token_count,
    text_token_count,
)
from tests.clients import CLIENT_TIMEOUT_SECONDS

from .conftest import CHAT_MODEL, EMBED_MODEL

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
]


@pytest.fixture
def client(shared_sim: SimulatorProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{shared_sim.url}/v1",
        api_key="ignored",
        max_retries=0,
        timeout=CLIENT_TIMEOUT_SECONDS,
    )


def test_chat_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.system_fingerprint == "fp_ollama"
    assert reply.model == CHAT_MODEL
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert choice.message.content == expected_text(CHAT_MODEL, MESSAGES, 12)
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == prompt_token_count(MESSAGES)
    assert reply.usage.completion_tokens == 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=CHAT_MODEL,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=5,
        )
    )
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert [c.choices[0].delta.content for c in content] == expected_tokens(CHAT_MODEL, MESSAGES, 5)
    # Ollama 0.24.0 names the role in every delta, and the done chunk carries the finish reason.
    assert all(c.choices[0].delta.role == "assistant" for c in chunks[:-1])
    assert all(c.usage is None for c in chunks[:-1])
    finish, usage = chunks[-2], chunks[-1]
    assert finish.choices[0].finish_reason == "length"
    assert finish.choices[0].delta.content == ""
    assert usage.choices == []
    assert usage.usage is not None
    assert usage.usage.completion_tokens == 5
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_text_content_parts_match_plain_messages(client: openai.OpenAI) -> None:
    parts: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]}
    ]
    reply = client.chat.completions.create(model=CHAT_MODEL, messages=parts)
    plain: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name a colour."}]
    assert reply.choices[0].message.content == expected_text(CHAT_MODEL, plain, 12)


def test_completions(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=CHAT_MODEL, prompt="Once upon a time")
    assert reply.id.startswith("cmpl-")
    assert reply.object == "text_completion"
    assert reply.choices[0].text == expected_text(CHAT_MODEL, "Once upon a time", 12)
    streamed = list(
        client.completions.create(
            model=CHAT_MODEL,
            prompt="Once upon a time",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text
    assert streamed[-1].choices == []
    assert streamed[-1].usage is not None
    assert streamed[-1].usage.completion_tokens == 12
    assert streamed[0].usage is not None
    assert streamed[0].usage.total_tokens == 0


def test_embeddings_default_base64_and_float(client: openai.OpenAI) -> None:
    texts = ["first text", "second"]
    default = client.embeddings.create(model=EMBED_MODEL, input=texts)  # client asks for base64
    assert [d.embedding for d in default.data] == [
        expected_embedding(EMBED_MODEL, t) for t in texts
    ]
    assert [d.index for d in default.data] == [0, 1]
    assert default.usage.prompt_tokens == sum(text_token_count(t) for t in texts)
    floats = client.embeddings.create(
        model=EMBED_MODEL, input="first text", encoding_format="float"
    )
    assert floats.data[0].embedding == expected_embedding(EMBED_MODEL, "first text")
    short = client.embeddings.create(
        model=EMBED_MODEL, input="x", dimensions=32, encoding_format="float"
    )
    assert short.data[0].embedding == expected_embedding(EMBED_MODEL, "x", 32)


def test_errors_have_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="absent", messages=MESSAGES)
    assert missing.value.body == {
        "message": "model 'absent' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.BadRequestError) as wrong:
        client.chat.completions.create(model=EMBED_MODEL, messages=MESSAGES)
    assert wrong.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="too short"):
        client.chat.completions.create(model=CHAT_MODEL, messages=[])
