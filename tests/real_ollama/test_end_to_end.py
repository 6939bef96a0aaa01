"""The proxy in front of the real Ollama with the tutorial's real models, through the stock clients.

One ``python -m proxy serve`` subprocess for the module (``smollm2:135m`` for chat,
``all-minilm:l6-v2`` for embeddings, both already in the cached models directory), driven with the
``openai`` and ``ollama`` clients exactly as a user would; a second, short-lived one for SIGTERM.
Generated text is whatever SmolLM2 says: the tests check that it is real text, not what it says.
Embeddings are checked for meaning: similar sentences are closer than unrelated ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import ollama
import openai
import pytest

from proxy.testing.services import ProxyProcess
from tests.real_ollama.support import (
    API_KEY,
    CHAT_MODEL,
    EMBEDDING_MODEL,
    PROMPT,
    RealOllama,
    assert_real_text,
    proxy,
    terminate,
)

pytestmark = [
    pytest.mark.real_ollama,
    pytest.mark.slow,
    # Fixture setup (the build in CI, the proxy's start) has its own deadlines; each test body
    # gets this one, on top of the clients' own timeouts below.
    pytest.mark.timeout(120, func_only=True),
]

CLIENT_TIMEOUT = 60.0
"""One client request: SmolLM2 on 2 busy cores makes roughly 10-30 tokens per second."""
MAX_TOKENS = 24
"""Enough for real text, short enough to keep each generation to a second or two."""

CAT = "The cat sits on the mat"
KITTEN = "A kitten is sitting on a rug"
TAXES = "Quarterly tax filings are due in April"
DIMENSIONS = 384


@pytest.fixture(scope="module")
def server(
    real_ollama: RealOllama, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    running = proxy(real_ollama, tmp_path_factory.mktemp("real-e2e"))
    running.start()
    try:
        yield running
    finally:
        if running.returncode is None:
            status, left = terminate(running)
            running.stop()
            assert status == 0, running.log_tail()
            assert left == [], f"processes left after SIGTERM: {left}"


@pytest.fixture(scope="module")
def oai(server: ProxyProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.url}/v1", api_key=API_KEY, timeout=CLIENT_TIMEOUT, max_retries=0
    )


@pytest.fixture(scope="module")
def oll(server: ProxyProcess) -> ollama.Client:
    return ollama.Client(host=server.url, headers=server.headers, timeout=CLIENT_TIMEOUT)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def assert_similarity_ordering(vectors: Sequence[Sequence[float]]) -> None:
    cat, kitten, taxes = vectors
    assert all(len(v) == DIMENSIONS for v in vectors), [len(v) for v in vectors]
    similar = cosine(cat, kitten)
    assert similar > cosine(cat, taxes), (similar, cosine(cat, taxes))
    assert similar > cosine(kitten, taxes), (similar, cosine(kitten, taxes))


# --- OpenAI API ----------------------------------------------------------------------------------


def test_openai_chat_whole(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=MAX_TOKENS
    )
    choice = completion.choices[0]
    assert_real_text(choice.message.content)
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert completion.model == CHAT_MODEL
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0


def test_openai_chat_streamed(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=MAX_TOKENS,
        stream=True,
    )
    pieces: list[str] = []
    finish_reasons: list[str] = []
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
    assert len(pieces) > 1, f"one chunk is not a stream: {pieces}"
    assert_real_text("".join(pieces))
    assert finish_reasons in (["stop"], ["length"]), finish_reasons


def test_openai_completions(oai: openai.OpenAI) -> None:
    completion = oai.completions.create(
        model=CHAT_MODEL, prompt="The capital of France is", max_tokens=MAX_TOKENS
    )
    assert_real_text(completion.choices[0].text)
    assert completion.choices[0].finish_reason in ("stop", "length")


def test_openai_embeddings(oai: openai.OpenAI) -> None:
    response = oai.embeddings.create(model=EMBEDDING_MODEL, input=[CAT, KITTEN, TAXES])
    assert [item.index for item in response.data] == [0, 1, 2]
    assert_similarity_ordering([item.embedding for item in response.data])


def test_openai_models_lists_both(oai: openai.OpenAI) -> None:
    ids = {model.id for model in oai.models.list()}
    assert ids == {CHAT_MODEL, EMBEDDING_MODEL}, ids
    assert oai.models.retrieve(CHAT_MODEL).id == CHAT_MODEL


def test_openai_unknown_model_is_404(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as chat_error:
        oai.chat.completions.create(
            model="llama3", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert "llama3" in chat_error.value.message
    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model="llama3", input="hi")


def test_openai_wrong_kind_is_a_clear_4xx(oai: openai.OpenAI) -> None:
    # Real Ollama 0.24.0 itself answers 200 with the chat model's own hidden states (576 values)
    # when asked for embeddings from SmolLM2; the proxy's catalog refuses it before Ollama.
    with pytest.raises(openai.APIStatusError) as embed_error:
        oai.embeddings.create(model=CHAT_MODEL, input="hi")
    assert 400 <= embed_error.value.status_code < 500
    body = embed_error.value.body
    assert isinstance(body, dict), body
    assert CHAT_MODEL in body["message"], body
    with pytest.raises(openai.APIStatusError) as chat_error:
        oai.chat.completions.create(
            model=EMBEDDING_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert 400 <= chat_error.value.status_code < 500
    assert EMBEDDING_MODEL in chat_error.value.message


# --- Ollama API ----------------------------------------------------------------------------------


def test_ollama_chat_whole(oll: ollama.Client) -> None:
    response = oll.chat(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        options={"num_predict": MAX_TOKENS},
    )
    assert_real_text(response.message.content)
    assert response.done is True
    assert response.eval_count


def test_ollama_chat_streamed(oll: ollama.Client) -> None:
    chunks = list(
        oll.chat(
            model=CHAT_MODEL,
            messages=[{"role": "user", "content": PROMPT}],
            options={"num_predict": MAX_TOKENS},
            stream=True,
        )
    )
    assert len(chunks) > 2, chunks
    assert [chunk.done for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].done_reason in ("stop", "length")
    assert_real_text("".join(chunk.message.content or "" for chunk in chunks))


def test_ollama_generate(oll: ollama.Client) -> None:
    response = oll.generate(
        model=CHAT_MODEL, prompt="The capital of France is", options={"num_predict": MAX_TOKENS}
    )
    assert_real_text(response.response)
    assert response.done is True


def test_ollama_embed(oll: ollama.Client) -> None:
    response = oll.embed(model=EMBEDDING_MODEL, input=[CAT, KITTEN, TAXES])
    assert len(response.embeddings) == 3
    assert_similarity_ordering(response.embeddings)
    # /api/embed returns unit vectors.
    assert all(abs(math.hypot(*v) - 1.0) < 1e-3 for v in response.embeddings)


def test_ollama_list_shows_both(oll: ollama.Client) -> None:
    names = {model.model for model in oll.list().models}
    assert names == {CHAT_MODEL, EMBEDDING_MODEL}, names
    shown = oll.show(EMBEDDING_MODEL)
    assert shown.details is not None
    assert shown.details.family == "bert"


def test_ollama_unknown_model_is_404(oll: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as chat_error:
        oll.chat(model="llama3", messages=[{"role": "user", "content": "hi"}])
    assert chat_error.value.status_code == 404
    assert "llama3" in chat_error.value.error
    with pytest.raises(ollama.ResponseError) as embed_error:
        oll.embed(model="llama3", input="hi")
    assert embed_error.value.status_code == 404


def test_ollama_wrong_kind_is_a_clear_4xx(oll: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as embed_error:
        oll.embed(model=CHAT_MODEL, input="hi")
    assert 400 <= embed_error.value.status_code < 500
    assert CHAT_MODEL in embed_error.value.error
    with pytest.raises(ollama.ResponseError) as chat_error:
        oll.chat(model=EMBEDDING_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert 400 <= chat_error.value.status_code < 500
    assert EMBEDDING_MODEL in chat_error.value.error


# --- shutdown ------------------------------------------------------------------------------------


def test_sigterm_exits_0_and_leaves_no_process(real_ollama: RealOllama, tmp_path: Path) -> None:
    running = proxy(real_ollama, tmp_path)
    running.start()
    try:
        client = ollama.Client(host=running.url, headers=running.headers, timeout=CLIENT_TIMEOUT)
        # Models loaded: ollama serve and its runners are all children of the proxy now.
        answer = client.generate(model=CHAT_MODEL, prompt="Hi", options={"num_predict": 4})
        assert answer.response
    except BaseException:
        running.stop()
        raise
    status, left = terminate(running)
    assert status == 0, running.log_tail()
    assert left == [], f"processes left after SIGTERM: {left}"
