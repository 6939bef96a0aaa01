"""Issue 18 with the real ``ollama serve`` 0.24.0: scoped keys, token metrics, the usage a client
asked for, OpenAI embeddings as the SDKs send them, and embeddings served beside a full chat lane.

One proxy for the module, with two scoped keys (``PROXY_KEYS``, a JSON document) and a chat
budget of one request at a time (``PROXY_MODEL_CONCURRENCY``); the stock ``openai``,
``anthropic`` and ``ollama`` clients send real requests, and ``/metrics`` must count what the
answers' own usage says, per model and key.

The ``openai`` client closes its connection at ``data: [DONE]``, often before Ollama's own end of
body reaches the proxy: :func:`test_every_stream_the_openai_client_reads_to_done_is_counted`
holds that such a stream is still counted as answered, with its tokens.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import struct
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import ollama
import openai
import pytest

from proxy.testing.harness import http_json, wait_until
from proxy.testing.services import ProxyProcess
from tests.real_ollama.support import (
    CHAT_MODEL,
    EMBEDDING_MODEL,
    PROMPT,
    RealOllama,
    Samples,
    assert_real_text,
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
"""One client request (SmolLM2 on 2 busy cores: a few tokens take 1 to 8 s)."""
MAX_TOKENS = 5
"""Tokens per answer: real text, and an answer that stops at the limit (``length``)."""
QUEUED_TOKENS = 16
"""Tokens of each chat that fills the chat lane: it must outlast an embedding."""
CHATS = 3
"""Chat streams started at once, against a chat budget of :data:`CHAT_BUDGET`."""
CHAT_BUDGET = 1
QUEUE_TIMEOUT = 15.0
"""For the chat streams to be one in Ollama and the rest queued in the proxy."""
EMBED_BOUND = 3.0
"""An embedding while the chat lane is full (seconds): it takes ~50 ms idle; the margin is for
two cores shared with the chat runner and other work."""
QUEUE_WAIT_BOUND = 0.1
"""The embedding's own wait for a slot (seconds): its lane is empty, so none."""
RACE_STREAMS = 60
"""At most this many short streams look for a lost count: while the bug lives about 1 in 4 is
lost on 2 busy cores and the test stops at the first; once it is fixed, all of them pass."""
RACE_SECONDS = 20.0
"""And at most this long."""
RACE_TOKENS = 2
"""Tokens per such stream: short, yet several pieces (1-token streams were never lost, 0 of 40)."""
LOG_TIMEOUT = 5.0
"""For the proxy's access-log events of requests already answered."""
DIMENSIONS = 384
SHORT = 64

STORY = "Write a long story about a dragon who learns to sing."
MESSAGES = [{"role": "user", "content": PROMPT}]
CAT = "The cat sits on the mat"
KITTEN = "A kitten is sitting on a rug"

TEAM_A = "team-a-real-key-0123456789"
TEAM_B = "team-b-real-key-0123456789"
KEYS = {
    "keys": [
        {"name": "team-a", "key": TEAM_A, "models": ["smollm2*"], "apis": ["openai"]},
        {"name": "team-b", "key": TEAM_B},
    ]
}
TEAM_A_SCOPE = "smollm2* through openai"


@pytest.fixture(scope="module")
def server(
    real_ollama: RealOllama, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    process = proxy(
        real_ollama,
        tmp_path_factory.mktemp("real-fair-share"),
        PROXY_KEYS=json.dumps(KEYS),
        PROXY_MODEL_CONCURRENCY=f"{CHAT_MODEL}={CHAT_BUDGET}",
    )
    with running(process):
        yield process


def oai(server: ProxyProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.url}/v1", api_key=key, timeout=CLIENT_TIMEOUT, max_retries=0
    )


def claude(server: ProxyProcess, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=server.url, api_key=key, timeout=CLIENT_TIMEOUT, max_retries=0
    )


def native(server: ProxyProcess, key: str) -> ollama.Client:
    return ollama.Client(
        host=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=CLIENT_TIMEOUT
    )


def grew(after: Samples, before: Samples, name: str, model: str, key: str) -> float:
    """How much one series of ``/metrics`` grew between two scrapes."""
    return metric(after, name, model=model, key=key) - metric(before, name, model=model, key=key)


def chat_stream(server: ProxyProcess, key: str, **body: Any) -> list[Any]:
    """A streamed chat completion read to its very end, as ``curl`` reads it: every event's
    data, parsed (``"[DONE]"`` as text). Not the ``openai`` client: see the module's doc."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=json.dumps({"model": CHAT_MODEL, "stream": True, **body}),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        )
        response = conn.getresponse()
        assert response.status == 200, response.read()
        raw = response.read().decode()
    finally:
        conn.close()
    data = [line[len("data: ") :] for line in raw.split("\n") if line.startswith("data: ")]
    return [item if item == "[DONE]" else json.loads(item) for item in data]


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


# --- scoped keys -------------------------------------------------------------------------------


def test_a_key_outside_its_scope_gets_403_naming_its_scope(server: ProxyProcess) -> None:
    team_a = oai(server, TEAM_A)
    with pytest.raises(openai.PermissionDeniedError) as model_refused:
        team_a.embeddings.create(model=EMBEDDING_MODEL, input=CAT)
    assert model_refused.value.body == {
        "message": f"key 'team-a' may not use model {EMBEDDING_MODEL!r}; it may use {TEAM_A_SCOPE}",
        "type": "permission_error",
        "param": None,
        "code": "forbidden",
    }

    with pytest.raises(anthropic.PermissionDeniedError) as anthropic_refused:
        claude(server, TEAM_A).messages.create(
            model=CHAT_MODEL, max_tokens=MAX_TOKENS, messages=[{"role": "user", "content": PROMPT}]
        )
    assert anthropic_refused.value.body == {
        "type": "error",
        "error": {
            "type": "permission_error",
            "message": f"key 'team-a' may not use the anthropic API; it may use {TEAM_A_SCOPE}",
        },
    }

    with pytest.raises(ollama.ResponseError) as ollama_refused:
        native(server, TEAM_A).chat(model=CHAT_MODEL, messages=MESSAGES)
    assert ollama_refused.value.status_code == 403
    assert ollama_refused.value.error == (
        f"key 'team-a' may not use the ollama API; it may use {TEAM_A_SCOPE}"
    )

    assert {model.id for model in team_a.models.list()} == {CHAT_MODEL}
    assert {model.id for model in oai(server, TEAM_B).models.list()} == {
        CHAT_MODEL,
        EMBEDDING_MODEL,
    }


# --- token metrics -----------------------------------------------------------------------------


def test_tokens_per_model_and_key_are_what_the_answers_say(server: ProxyProcess) -> None:
    before = metrics(server)
    team_a = oai(server, TEAM_A)
    streamed = chat_stream(
        server,
        TEAM_A,
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        stream_options={"include_usage": True},
    )
    assert streamed[-1] == "[DONE]", streamed[-1]
    chat_usage = streamed[-2]["usage"]
    response = team_a.responses.create(model=CHAT_MODEL, input=PROMPT, max_output_tokens=MAX_TOKENS)
    assert_real_text(response.output_text)

    with claude(server, TEAM_B).messages.stream(
        model=CHAT_MODEL, max_tokens=MAX_TOKENS, messages=[{"role": "user", "content": PROMPT}]
    ) as stream:
        message = stream.get_final_message()
    last = list(
        native(server, TEAM_B).chat(
            model=CHAT_MODEL, messages=MESSAGES, options={"num_predict": MAX_TOKENS}, stream=True
        )
    )[-1]
    embedded = oai(server, TEAM_B).embeddings.create(
        model=EMBEDDING_MODEL, input=[CAT, KITTEN], encoding_format="float"
    )
    after = metrics(server)

    assert response.usage is not None
    assert last.done is True
    prompt, completion = "proxy_prompt_tokens_total", "proxy_completion_tokens_total"
    expected = {
        (CHAT_MODEL, "team-a", prompt): chat_usage["prompt_tokens"] + response.usage.input_tokens,
        (CHAT_MODEL, "team-a", completion): (
            chat_usage["completion_tokens"] + response.usage.output_tokens
        ),
        (CHAT_MODEL, "team-b", prompt): message.usage.input_tokens + (last.prompt_eval_count or 0),
        (CHAT_MODEL, "team-b", completion): message.usage.output_tokens + (last.eval_count or 0),
        (EMBEDDING_MODEL, "team-b", prompt): embedded.usage.prompt_tokens,
        (EMBEDDING_MODEL, "team-b", completion): 0,
    }
    counted = {
        (model, key, name): grew(after, before, name, model, key) for model, key, name in expected
    }
    print(f"tokens counted per model, key and counter: {counted}")
    assert counted == expected
    assert all(
        counted[(CHAT_MODEL, key, name)] > 0
        for key in ("team-a", "team-b")
        for name in (prompt, completion)
    )

    # Streams (team-a's chat; team-b's messages and native chat) have a first token; every
    # model request waited for its model's slot; a generation rate comes from Ollama's durations
    # (native) or the proxy's own timing of a stream.
    histograms = {
        "proxy_time_to_first_token_seconds_count": {
            (CHAT_MODEL, "team-a"): 1,
            (CHAT_MODEL, "team-b"): 2,
        },
        "proxy_queue_wait_seconds_count": {
            (CHAT_MODEL, "team-a"): 2,
            (CHAT_MODEL, "team-b"): 2,
            (EMBEDDING_MODEL, "team-b"): 1,
        },
        "proxy_generation_tokens_per_second_count": {
            (CHAT_MODEL, "team-a"): 1,
            (CHAT_MODEL, "team-b"): 2,
        },
    }
    for name, series in histograms.items():
        observed = {labels: grew(after, before, name, *labels) for labels in series}
        assert observed == series, name
    rate = "proxy_generation_tokens_per_second_sum"
    assert grew(after, before, rate, CHAT_MODEL, "team-b") > 0
    first = "proxy_time_to_first_token_seconds_sum"
    assert grew(after, before, first, CHAT_MODEL, "team-b") > 0


def test_a_chat_stream_has_a_usage_chunk_exactly_when_asked(server: ProxyProcess) -> None:
    def counts() -> tuple[float, float]:
        samples = metrics(server)
        return (
            metric(samples, "proxy_prompt_tokens_total", model=CHAT_MODEL, key="team-a"),
            metric(samples, "proxy_completion_tokens_total", model=CHAT_MODEL, key="team-a"),
        )

    story = [{"role": "user", "content": STORY}]
    before = counts()
    asked = chat_stream(
        server,
        TEAM_A,
        messages=story,
        max_tokens=MAX_TOKENS,
        stream_options={"include_usage": True},
    )
    between = counts()
    plain = chat_stream(server, TEAM_A, messages=story, max_tokens=MAX_TOKENS)
    after = counts()

    assert asked[-1] == plain[-1] == "[DONE]"
    usage_chunks = [chunk for chunk in asked[:-1] if "usage" in chunk]
    assert len(usage_chunks) == 1, asked
    assert usage_chunks[0] is asked[-2], "the usage chunk comes last, before [DONE]"
    assert usage_chunks[0]["choices"] == []
    usage = usage_chunks[0]["usage"]
    assert (between[0] - before[0], between[1] - before[1]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )

    chunks = plain[:-1]
    assert all("usage" not in chunk for chunk in chunks), "usage the client did not ask for"
    assert all(chunk["choices"] for chunk in chunks), "a usage chunk the client did not ask for"
    assert_real_text("".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks))
    finished = [chunk["choices"][0]["finish_reason"] for chunk in chunks]
    assert [reason for reason in finished if reason] == ["length"], finished
    # The same prompt, and an answer cut at MAX_TOKENS: counted though the client saw no usage.
    assert (after[0] - between[0], after[1] - between[1]) == (usage["prompt_tokens"], MAX_TOKENS)


def test_every_stream_the_openai_client_reads_to_done_is_counted(server: ProxyProcess) -> None:
    client = oai(server, TEAM_A)
    run = uuid.uuid4().hex[:8]
    before = metrics(server)
    usages: dict[str, int] = {}
    deadline = time.monotonic() + RACE_SECONDS

    def records() -> dict[str, dict[str, Any]]:
        return {
            event["request_id"]: event
            for event in server.events()
            if event.get("route") == "/v1/chat/completions" and event["request_id"] in usages
        }

    while len(usages) < RACE_STREAMS and time.monotonic() < deadline:
        request_id = f"{run}-{len(usages)}"
        chunks = list(
            client.chat.completions.create(
                model=CHAT_MODEL,
                messages=[{"role": "user", "content": STORY}],
                max_tokens=RACE_TOKENS,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"X-Request-ID": request_id},
            )
        )
        usage = chunks[-1].usage
        assert usage is not None, chunks[-1]
        usages[request_id] = usage.completion_tokens
        if any(record["status"] != 200 for record in records().values()):
            break  # one is enough: stop early

    def every_one_logged() -> dict[str, dict[str, Any]]:
        found = records()
        return found if len(found) == len(usages) else {}

    logged = wait_until(every_one_logged, LOG_TIMEOUT, "an access-log event for every stream")
    after = metrics(server)
    statuses = {request_id: record["status"] for request_id, record in logged.items()}
    print(f"{len(usages)} streams read to [DONE] by the openai client: {statuses}")
    assert set(statuses.values()) == {200}, statuses
    counted = grew(after, before, "proxy_completion_tokens_total", CHAT_MODEL, "team-a")
    assert counted == sum(usages.values())


# --- embeddings as the SDKs send them ----------------------------------------------------------


def test_base64_and_float_embeddings_are_the_same_vectors(server: ProxyProcess) -> None:
    client = oai(server, TEAM_B)
    default = client.embeddings.create(model=EMBEDDING_MODEL, input=[CAT, KITTEN])  # base64
    floats = client.embeddings.create(
        model=EMBEDDING_MODEL, input=[CAT, KITTEN], encoding_format="float"
    )
    for decoded, plain in zip(default.data, floats.data, strict=True):
        assert len(plain.embedding) == DIMENSIONS
        assert decoded.embedding == pytest.approx(plain.embedding, abs=1e-6)

    status, body = http_json(
        server.url + "/v1/embeddings",
        method="POST",
        body={"model": EMBEDDING_MODEL, "input": CAT, "encoding_format": "base64"},
        headers={"Authorization": f"Bearer {TEAM_B}"},
        timeout=CLIENT_TIMEOUT,
    )
    assert status == 200, body
    wire = body["data"][0]["embedding"]
    assert isinstance(wire, str), "base64 on the wire"
    vector = struct.unpack(f"<{DIMENSIONS}f", base64.b64decode(wire))  # little-endian float32
    assert list(vector) == pytest.approx(floats.data[0].embedding, abs=1e-6)


def test_dimensions_shorten_and_never_lengthen(server: ProxyProcess) -> None:
    client = oai(server, TEAM_B)
    full = client.embeddings.create(model=EMBEDDING_MODEL, input=CAT, encoding_format="float")
    short = client.embeddings.create(
        model=EMBEDDING_MODEL, input=CAT, encoding_format="float", dimensions=SHORT
    )
    assert len(short.data[0].embedding) == SHORT
    assert cosine(short.data[0].embedding, full.data[0].embedding[:SHORT]) > 0.999
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=EMBEDDING_MODEL, input=CAT, dimensions=DIMENSIONS + 1)
    assert refused.value.status_code == 400
    body = refused.value.body
    assert isinstance(body, dict), body
    assert body["param"] == "dimensions", body
    assert f"from 1 to {DIMENSIONS}" in body["message"], body


# --- a lane per model --------------------------------------------------------------------------


def test_an_embedding_is_answered_while_chat_streams_wait_for_their_lane(
    server: ProxyProcess,
) -> None:
    client = oai(server, TEAM_B)
    finished: dict[int, float] = {}

    def chat(index: int) -> str:
        stream = client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[{"role": "user", "content": f"{STORY} Story {index}."}],
            max_tokens=QUEUED_TOKENS,
            stream=True,
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        finished[index] = time.monotonic()
        return text

    def lane_full() -> Samples:
        samples = metrics(server)
        in_flight = metric(samples, "proxy_model_requests_in_flight", model=CHAT_MODEL)
        queued = metric(samples, "proxy_model_requests_queued", model=CHAT_MODEL)
        return samples if (in_flight, queued) == (CHAT_BUDGET, CHATS - CHAT_BUDGET) else {}

    with ThreadPoolExecutor(CHATS) as pool:
        chats = [pool.submit(chat, index) for index in range(CHATS)]
        before = wait_until(lane_full, QUEUE_TIMEOUT, "one chat in Ollama and the rest queued")
        started = time.monotonic()
        vectors = client.embeddings.create(
            model=EMBEDDING_MODEL, input=CAT, encoding_format="float"
        )
        embedded = time.monotonic()
        texts = [future.result(timeout=CLIENT_TIMEOUT * CHATS) for future in chats]
    after = metrics(server)

    assert len(vectors.data[0].embedding) == DIMENSIONS
    for text in texts:
        assert_real_text(text)
    order = sorted(finished.values())
    print(
        f"embedding answered in {embedded - started:.3f} s with the chat lane full; chats "
        f"finished {', '.join(f'{at - started:+.2f} s' for at in order)} from its start"
    )
    assert embedded - started < EMBED_BOUND
    assert embedded < order[CHAT_BUDGET], "the embedding waited behind queued chats"
    waited = grew(after, before, "proxy_queue_wait_seconds_sum", EMBEDDING_MODEL, "team-b")
    assert waited < QUEUE_WAIT_BOUND
