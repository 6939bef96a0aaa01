"""The real ``openai`` client's Responses API (``responses.create``) against the simulator."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest

from proxy.testing.services import SimulatorProcess
from proxy.testing.simulator import expected_text, expected_tokens, prompt_token_count
from tests.clients import CLIENT_TIMEOUT, CLIENT_TIMEOUT_SECONDS

from .conftest import CHAT_MODEL, EMBED_MODEL, MakeSim

QUESTION = "Name a colour."
AS_MESSAGES = [{"role": "user", "content": QUESTION}]


@pytest.fixture
def client(shared_sim: SimulatorProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{shared_sim.url}/v1",
        api_key="ignored",
        max_retries=0,
        timeout=CLIENT_TIMEOUT_SECONDS,
    )


def test_a_whole_response(client: openai.OpenAI) -> None:
    response = client.responses.create(model=CHAT_MODEL, input=QUESTION)
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.model == CHAT_MODEL
    assert response.output_text == expected_text(CHAT_MODEL, AS_MESSAGES, 12)
    message = response.output[0]
    assert message.type == "message"
    assert message.role == "assistant"
    assert response.usage is not None
    assert response.usage.input_tokens == prompt_token_count(AS_MESSAGES)
    assert response.usage.output_tokens == 12
    assert response.usage.total_tokens == response.usage.input_tokens + 12
    assert response.temperature == 1
    assert response.instructions is None


def test_instructions_and_items_become_messages(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=CHAT_MODEL,
        instructions="Be brief.",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": QUESTION}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Blue."}]},
            {"role": "user", "content": "Another?"},
        ],
        max_output_tokens=5,
    )
    messages = [
        {"role": "system", "content": "Be brief."},
        *AS_MESSAGES,
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"},
    ]
    assert response.output_text == expected_text(CHAT_MODEL, messages, 5)
    assert response.instructions == "Be brief."
    assert response.max_output_tokens == 5
    assert response.status == "completed"  # Ollama never reports "incomplete"


def test_a_streamed_response(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(model=CHAT_MODEL, input=QUESTION, max_output_tokens=4, stream=True)
    )
    kinds = [event.type for event in events]
    tokens = expected_tokens(CHAT_MODEL, AS_MESSAGES, 4)
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(tokens),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert deltas == tokens
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == "".join(tokens)
    assert completed.response.usage is not None
    assert completed.response.usage.output_tokens == 4


def test_the_stream_helper_accumulates_the_text(client: openai.OpenAI) -> None:
    with client.responses.stream(model=CHAT_MODEL, input=QUESTION) as stream:
        text = "".join(
            event.delta for event in stream if event.type == "response.output_text.delta"
        )
        final = stream.get_final_response()
    assert text == expected_text(CHAT_MODEL, AS_MESSAGES, 12)
    assert final.output_text == text


def test_errors_have_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="absent", input=QUESTION)
    assert missing.value.body == {
        "message": "model 'absent' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.BadRequestError) as wrong_kind:
        client.responses.create(model=EMBED_MODEL, input=QUESTION, stream=True)
    assert wrong_kind.value.message.endswith('"all-minilm" does not support chat')
    with pytest.raises(openai.BadRequestError, match="invalid reasoning value"):
        client.responses.create(
            model=CHAT_MODEL,
            input=QUESTION,
            reasoning={"effort": "huge"},  # type: ignore[typeddict-item]
        )
    with pytest.raises(openai.BadRequestError, match="does not support thinking"):
        client.responses.create(model=CHAT_MODEL, input=QUESTION, reasoning={"effort": "high"})


async def _events(url: str, body: dict[str, Any]) -> tuple[int, list[tuple[str, Any]]]:
    async with (
        aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http,
        http.post(f"{url}/v1/responses", json=body) as response,
    ):
        raw = (await response.read()).decode()
    events = []
    for block in filter(None, raw.split("\n\n")):
        name, data = block.split("\n")
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return response.status, events


async def test_a_runner_failure_mid_stream_ends_it_without_a_word(make_sim: MakeSim) -> None:
    sim = await make_sim({"SIM_STREAM_ERROR_AFTER": "5"})
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        await http.post(f"{sim.url}/api/pull", json={"model": CHAT_MODEL, "stream": False})
    body = {"model": CHAT_MODEL, "input": QUESTION, "stream": True}
    status, events = await _events(sim.url, body)
    assert status == 200
    names = [name for name, _ in events]
    assert names[0] == "response.created"
    assert "response.completed" not in names  # as real Ollama: no event says it failed
    assert names[-1] == "response.output_text.delta"
