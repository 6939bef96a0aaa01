"""The real ``ollama`` Python client against the simulator subprocess."""

from __future__ import annotations

import ollama
import pytest

from proxy.testing.services import SimulatorProcess
from proxy.testing.simulator import (
    expected_embedding,
    expected_text,
    expected_tokens,
    prompt_token_count,
)
from tests.clients import CLIENT_TIMEOUT_SECONDS

from .conftest import CHAT_MODEL, EMBED_MODEL, MakeSim

MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture
def client(shared_sim: SimulatorProcess) -> ollama.Client:
    return ollama.Client(host=shared_sim.url, timeout=CLIENT_TIMEOUT_SECONDS)


async def test_pull_streams_progress_then_lists_the_model(make_sim: MakeSim) -> None:
    sim = await make_sim()
    client = ollama.AsyncClient(host=sim.url, timeout=CLIENT_TIMEOUT_SECONDS)
    statuses = [p async for p in await client.pull("smollm2", stream=True)]

    assert statuses[0].status == "pulling manifest"
    layer = [p for p in statuses if p.digest]
    assert layer[0].status == f"pulling {(layer[0].digest or '')[7:19]}"
    assert layer[0].completed is None  # Go omits a zero "completed"
    completed = [p.completed or 0 for p in layer if p.digest == layer[0].digest]
    assert completed[-1] == layer[0].total
    assert completed == sorted(completed)
    assert [p.status for p in statuses[-4:]] == [
        "verifying sha256 digest",
        "writing manifest",
        "removing any unused layers",
        "success",
    ]
    listed = (await client.list()).models
    assert [m.model for m in listed] == ["smollm2:latest"]
    assert listed[0].details is not None
    assert listed[0].details.format == "gguf"


async def test_pull_without_stream_returns_success(make_sim: MakeSim) -> None:
    client = ollama.AsyncClient(host=(await make_sim()).url, timeout=CLIENT_TIMEOUT_SECONDS)
    assert (await client.pull("registry.ollama.ai/library/all-minilm:l6-v2")).status == "success"
    assert [m.model for m in (await client.list()).models] == ["all-minilm:l6-v2"]


def test_pull_of_an_unknown_model_fails_in_band(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError, match="pull model manifest: file does not exist"):
        list(client.pull("no-such-model", stream=True))


def test_chat_stream_is_deterministic(client: ollama.Client) -> None:
    chunks = list(client.chat(model=CHAT_MODEL, messages=MESSAGES, stream=True))

    assert [c.message.content for c in chunks[:-1]] == expected_tokens(CHAT_MODEL, MESSAGES, 12)
    final = chunks[-1]
    assert final.done
    assert final.done_reason == "stop"
    assert final.message.content == ""
    assert final.eval_count == 12
    assert final.prompt_eval_count == prompt_token_count(MESSAGES)
    assert final.total_duration
    assert final.load_duration is not None
    assert final.eval_duration


def test_chat_without_stream_and_num_predict(client: ollama.Client) -> None:
    reply = client.chat(model=CHAT_MODEL, messages=MESSAGES, options={"num_predict": 3})
    assert reply.message.role == "assistant"
    assert reply.message.content == expected_text(CHAT_MODEL, MESSAGES, 3)
    assert reply.done_reason == "length"
    assert reply.eval_count == 3


def test_generate_matches_chat_helpers_and_names_normalise(client: ollama.Client) -> None:
    full = client.generate(model="registry.ollama.ai/library/smollm2:135m", prompt="Hello")
    assert full.response == expected_text("smollm2:135m", "Hello", 12)
    assert full.context
    assert full.model == "registry.ollama.ai/library/smollm2:135m"
    streamed = "".join(
        c.response or "" for c in client.generate(model=CHAT_MODEL, prompt="Hello", stream=True)
    )
    assert streamed == full.response


def test_empty_prompt_loads_and_keep_alive_zero_unloads(client: ollama.Client) -> None:
    loaded = client.generate(model=CHAT_MODEL, prompt="")
    assert loaded.done_reason == "load"
    assert CHAT_MODEL in [m.model for m in client.ps().models]
    unloaded = client.chat(model=CHAT_MODEL, messages=[], keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert CHAT_MODEL not in [m.model for m in client.ps().models]


def test_ps_reports_expiry_and_forever(client: ollama.Client) -> None:
    client.generate(model=CHAT_MODEL, prompt="hi", keep_alive=-1)
    running = {m.model: m for m in client.ps().models}
    expires = running[CHAT_MODEL].expires_at
    assert expires is not None
    assert expires.year > 2200
    assert running[CHAT_MODEL].size
    assert running[CHAT_MODEL].size_vram == 0


def test_show_reports_capabilities(client: ollama.Client) -> None:
    chat = client.show(CHAT_MODEL)
    assert chat.capabilities == ["completion"]
    assert chat.modelinfo is not None
    assert chat.modelinfo["general.architecture"] == "llama"
    assert chat.template
    assert chat.modelfile
    assert "FROM " in chat.modelfile
    embedding = client.show(EMBED_MODEL)
    assert embedding.capabilities == ["embedding"]
    assert embedding.modelinfo is not None
    assert embedding.modelinfo["bert.embedding_length"] == 384


def test_embed_and_legacy_embeddings(client: ollama.Client) -> None:
    result = client.embed(model=EMBED_MODEL, input=["a cat", "a dog"])
    assert result.embeddings == [expected_embedding(EMBED_MODEL, t) for t in ("a cat", "a dog")]
    assert result.prompt_eval_count == 4
    short = client.embed(model=EMBED_MODEL, input="a cat", dimensions=64)
    assert short.embeddings[0] == expected_embedding(EMBED_MODEL, "a cat", 64)
    assert sum(v * v for v in short.embeddings[0]) == pytest.approx(1.0, abs=1e-5)
    legacy = client.embeddings(model=EMBED_MODEL, prompt="a cat")
    assert list(legacy.embedding) == expected_embedding(EMBED_MODEL, "a cat")


def test_missing_model_is_a_404_response_error(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="llama3.2", messages=MESSAGES)
    assert info.value.status_code == 404
    assert info.value.error == "model 'llama3.2' not found"
    with pytest.raises(ollama.ResponseError) as shown:
        client.show("llama3.2")
    assert shown.value.status_code == 404
    assert shown.value.error == "model 'llama3.2' not found"  # the name as given


def test_capability_mismatches_are_400(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as chat:
        client.chat(model=EMBED_MODEL, messages=MESSAGES)
    assert chat.value.status_code == 400
    assert chat.value.error == '"all-minilm" does not support chat'
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(ollama.ResponseError) as tools:
        client.chat(model=CHAT_MODEL, messages=MESSAGES, tools=[tool])
    assert tools.value.status_code == 400
    assert tools.value.error == "registry.ollama.ai/library/smollm2:135m does not support tools"
    with pytest.raises(ollama.ResponseError) as think:
        client.chat(model=CHAT_MODEL, messages=MESSAGES, think=True)
    assert think.value.error == '"smollm2:135m" does not support thinking'


def test_a_chat_model_embeds_at_its_hidden_size(client: ollama.Client) -> None:
    # Real Ollama 0.24.0 answers 200 with the chat model's own hidden states.
    vectors = client.embed(model=CHAT_MODEL, input="x").embeddings
    assert vectors == [expected_embedding(CHAT_MODEL, "x")]
    assert len(vectors[0]) == 576
    assert len(client.embeddings(model=CHAT_MODEL, prompt="x").embedding) == 576


async def test_copy_and_delete(make_sim: MakeSim) -> None:
    sim = await make_sim()
    client = ollama.AsyncClient(host=sim.url, timeout=CLIENT_TIMEOUT_SECONDS)
    await client.pull(CHAT_MODEL)
    assert (await client.copy(CHAT_MODEL, "mine:v1")).status == "success"
    reply = await client.generate(model="mine:v1", prompt="x")
    assert reply.response == expected_text(CHAT_MODEL, "x", 12)  # a copy shares the weights
    assert (await client.delete(CHAT_MODEL)).status == "success"
    assert [m.model for m in (await client.list()).models] == ["mine:v1"]
    with pytest.raises(ollama.ResponseError) as info:
        await client.delete(CHAT_MODEL)
    assert info.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as copied:
        await client.copy("absent", "other")
    assert copied.value.status_code == 404
