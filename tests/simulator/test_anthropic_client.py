"""The real ``anthropic`` client (``messages.create``, ``messages.stream``) against the
simulator's ``/v1/messages``."""

from __future__ import annotations

import anthropic
import ollama
import pytest
from anthropic.types import MessageParam

from proxy.testing.services import SimulatorProcess
from proxy.testing.simulator import expected_text, expected_tokens, prompt_token_count
from tests.clients import CLIENT_TIMEOUT_SECONDS

from .conftest import CHAT_MODEL, EMBED_MODEL, MakeSim

MESSAGES: list[MessageParam] = [{"role": "user", "content": "Name a colour."}]
AS_NATIVE = [{"role": "user", "content": "Name a colour."}]


def _client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=url, api_key="ignored", max_retries=0, timeout=CLIENT_TIMEOUT_SECONDS
    )


@pytest.fixture
def client(shared_sim: SimulatorProcess) -> anthropic.Anthropic:
    return _client(shared_sim.url)


def test_a_whole_message(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=CHAT_MODEL, max_tokens=100, messages=MESSAGES)
    assert message.type == "message"
    assert message.id.startswith("msg_")
    assert message.role == "assistant"
    assert message.model == CHAT_MODEL
    assert message.stop_reason == "end_turn"
    block = message.content[0]
    assert block.type == "text"
    assert block.text == expected_text(CHAT_MODEL, AS_NATIVE, 12)
    assert message.usage.input_tokens == prompt_token_count(AS_NATIVE)
    assert message.usage.output_tokens == 12


def test_max_tokens_and_system_blocks(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=CHAT_MODEL,
        max_tokens=3,
        system=[{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Name a colour."}]}],
    )
    native = [{"role": "system", "content": "Be brief."}, *AS_NATIVE]
    assert message.stop_reason == "max_tokens"
    assert message.content[0].type == "text"
    assert message.content[0].text == expected_text(CHAT_MODEL, native, 3)


def test_a_streamed_message(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=CHAT_MODEL, max_tokens=5, messages=MESSAGES) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [event.type for event in events if not event.type.endswith("text")]
    tokens = expected_tokens(CHAT_MODEL, AS_NATIVE, 5)
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * len(tokens),
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert final.content[0].type == "text"
    assert final.content[0].text == "".join(tokens)
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 5
    # Before the model counts, Ollama estimates the input: a quarter of its bytes ("user" + text).
    start = events[0]
    assert start.type == "message_start"
    assert start.message.usage.input_tokens == len("user" + "Name a colour.") // 4


def test_create_with_stream_true(client: anthropic.Anthropic) -> None:
    events = list(
        client.messages.create(model=CHAT_MODEL, max_tokens=4, messages=MESSAGES, stream=True)
    )
    text = "".join(
        event.delta.text
        for event in events
        if event.type == "content_block_delta" and event.delta.type == "text_delta"
    )
    assert text == expected_text(CHAT_MODEL, AS_NATIVE, 4)


def test_errors_have_anthropic_shape(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="absent", max_tokens=10, messages=MESSAGES)
    body = missing.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"] == {"type": "not_found_error", "message": "model 'absent' not found"}
    assert body["request_id"].startswith("req_")
    with pytest.raises(anthropic.BadRequestError, match="does not support chat"):
        client.messages.create(model=EMBED_MODEL, max_tokens=10, messages=MESSAGES)
    with pytest.raises(anthropic.BadRequestError, match="max_tokens is required"):
        client.messages.create(model=CHAT_MODEL, max_tokens=0, messages=MESSAGES)
    with (
        pytest.raises(anthropic.NotFoundError),
        client.messages.stream(model="absent", max_tokens=10, messages=MESSAGES) as stream,
    ):
        list(stream)


def test_thinking_is_relaxed_for_a_model_that_cannot(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=CHAT_MODEL,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=MESSAGES,
    )
    assert message.content[0].type == "text"


async def test_a_runner_failure_before_the_first_token_is_a_500(make_sim: MakeSim) -> None:
    sim = await make_sim({"SIM_STREAM_ERROR_AFTER": "0"})
    await ollama.AsyncClient(host=sim.url, timeout=CLIENT_TIMEOUT_SECONDS).pull(CHAT_MODEL)
    client = _client(sim.url)
    with (
        pytest.raises(anthropic.InternalServerError, match="unexpected EOF"),
        client.messages.stream(model=CHAT_MODEL, max_tokens=10, messages=MESSAGES) as stream,
    ):
        list(stream)
