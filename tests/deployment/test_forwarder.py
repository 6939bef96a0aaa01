"""ProxyClient and request preparation, against a scripted fake proxy."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from aiohttp import web

from proxy.config import load_settings
from proxy.forwarder import (
    InvalidRequestError,
    ProxyClient,
    ProxyUnavailableError,
    Route,
    SSEDecoder,
    UpstreamError,
    prepare,
)
from tests.deployment.conftest import FakeProxy, free_port

ENV = {"OLLAMA_CHAT_MODELS": "smollm2:135m,qwen", "OLLAMA_EMBEDDING_MODELS": "all-minilm:l6-v2"}
CATALOG = load_settings(ENV).catalog
CHAT = {"model": "smollm2:135m", "messages": [{"role": "user", "content": "Hi"}]}
KEY = "k" * 24


@pytest.fixture
def client(fake_proxy: FakeProxy) -> Iterator[ProxyClient]:
    settings = load_settings({**ENV, "PROXY_PORT": str(fake_proxy.port), "PROXY_API_KEY": KEY})
    client = ProxyClient(settings)
    yield client
    client.close()


# --- prepare -------------------------------------------------------------------------------


def test_string_payload_is_sent_as_its_original_text() -> None:
    text = '{"model": "smollm2:135m",   "messages": [{"role":"user","content":"h\\u00e9"}]}'
    prepared = prepare(text, CATALOG)
    assert prepared.body == text.encode()
    assert prepared.route is Route.CHAT
    assert not prepared.stream


def test_dict_payload_is_dumped_once() -> None:
    prepared = prepare({**CHAT, "stream": True}, CATALOG)
    assert json.loads(prepared.body) == {**CHAT, "stream": True}
    assert prepared.stream


@pytest.mark.parametrize(
    ("payload", "route"),
    [
        ({"model": "smollm2:135m", "prompt": "Once"}, Route.COMPLETION),
        ({"model": "all-minilm:l6-v2", "input": "x"}, Route.EMBEDDING),
        ({"model": "ubiops-deployment/dep/v1/all-minilm:l6-v2", "input": ["a"]}, Route.EMBEDDING),
        ({"model": "ubiops-deployment/dep//smollm2:135m", "messages": []}, Route.CHAT),
    ],
)
def test_route_follows_the_input_field(payload: dict[str, object], route: Route) -> None:
    assert prepare(payload, CATALOG).route is route


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ("{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ("[1, 2]", "not a JSON array"),
        (42, "not int"),
        ({"messages": []}, 'no "model" field'),
        ({"model": "llama3", "messages": []}, "Available models: smollm2:135m, qwen"),
        ({"model": "smollm2:135m"}, 'none of "messages"'),
        ({"model": "smollm2:135m", "messages": [], "input": "x"}, "send exactly one"),
        ({"model": "all-minilm:l6-v2", "messages": []}, "is an embedding model"),
        ({"model": "qwen", "input": "x"}, "pick an embedding model: all-minilm:l6-v2"),
    ],
)
def test_bad_input_gives_a_public_error(data: object, fragment: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        prepare(data, CATALOG)
    assert fragment in info.value.public_error_message


def test_unknown_model_lists_every_available_model() -> None:
    with pytest.raises(InvalidRequestError) as info:
        prepare({"model": "nope", "messages": []}, CATALOG)
    message = info.value.public_error_message
    assert all(name in message for name in ("smollm2:135m", "qwen", "all-minilm:l6-v2"))


# --- SSE decoding --------------------------------------------------------------------------


def test_sse_decoder_handles_split_frames_and_line_endings() -> None:
    stream = b'data: {"a":1}\n\ndata:{"b":2}\r\n\r\n: comment\n\nevent: x\ndata: l1\ndata: l2\r\r\n'
    decoder = SSEDecoder()
    events = [event for i in range(len(stream)) for event in decoder.feed(stream[i : i + 1])]
    assert events == ['{"a":1}', '{"b":2}', "l1\nl2"]
    assert not decoder.pending


# --- forwarding ----------------------------------------------------------------------------


def _sse(*events: str) -> bytes:
    return b"".join(f"data: {event}\n\n".encode() for event in events)


def _stream_handler(body: bytes, *, status: int = 200) -> object:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=status)
        response.content_type = "text/event-stream"
        await response.prepare(request)
        for piece in (body[i : i + 7] for i in range(0, len(body), 7)):
            await response.write(piece)
        return response

    return handler


def test_stream_chunks_are_relayed_verbatim_and_returned_as_a_list(
    fake_proxy: FakeProxy, client: ProxyClient
) -> None:
    chunks = ['{"id":"1","choices":[{"delta":{"content":"He"}}]}', '{"id":"1",  "choices":[]}']
    fake_proxy.routes["POST", "/v1/chat/completions"] = _stream_handler(  # type: ignore[assignment]
        _sse(*chunks, "[DONE]")
    )
    seen: list[str] = []
    text = json.dumps({**CHAT, "stream": True})
    output = client.forward(text, seen.append)
    assert seen == chunks
    assert output == "[" + ",".join(chunks) + "]"
    method, path, body, headers = fake_proxy.seen[-1]
    assert (method, path, body) == ("POST", "/v1/chat/completions", text.encode())
    assert headers["Authorization"] == f"Bearer {KEY}"


def test_non_stream_answer_is_returned_as_received(
    fake_proxy: FakeProxy, client: ProxyClient
) -> None:
    answer = '{"object":"list","data":[{"embedding":[0.1,0.2]}]}'

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(text=answer, content_type="application/json")

    fake_proxy.routes["POST", "/v1/embeddings"] = handler
    for _ in range(3):
        assert client.forward({"model": "all-minilm:l6-v2", "input": "x"}) == answer
    assert len(fake_proxy.connections) == 1, "one keep-alive connection per process"


def test_upstream_error_status_becomes_a_public_error(
    fake_proxy: FakeProxy, client: ProxyClient
) -> None:
    async def handler(_request: web.Request) -> web.Response:
        body = {"error": {"message": "model 'qwen' is not available yet (pulling)"}}
        return web.json_response(body, status=503)

    fake_proxy.routes["POST", "/v1/completions"] = handler
    with pytest.raises(UpstreamError) as info:
        client.forward({"model": "qwen", "prompt": "x"})
    assert info.value.public_error_message == (
        "The model server could not answer: model 'qwen' is not available yet (pulling) "
        "(HTTP 503); retry in a few seconds."
    )


def test_mid_stream_error_event_fails_the_request_after_relaying_what_came(
    fake_proxy: FakeProxy, client: ProxyClient
) -> None:
    error = '{"error": {"message": "Ollama went away", "type": "api_error"}}'
    fake_proxy.routes["POST", "/v1/chat/completions"] = _stream_handler(  # type: ignore[assignment]
        _sse('{"id":"1","choices":[]}', error)
    )
    seen: list[str] = []
    with pytest.raises(UpstreamError) as info:
        client.forward({**CHAT, "stream": True}, seen.append)
    assert info.value.public_error_message == "The answer failed after 1 chunks: Ollama went away"
    assert seen == ['{"id":"1","choices":[]}']


def test_stream_without_done_is_reported_incomplete(
    fake_proxy: FakeProxy, client: ProxyClient
) -> None:
    fake_proxy.routes["POST", "/v1/chat/completions"] = _stream_handler(  # type: ignore[assignment]
        _sse('{"id":"1","choices":[]}')
    )
    with pytest.raises(UpstreamError, match="ended the stream early"):
        client.forward({**CHAT, "stream": True})


def test_unreachable_proxy_is_a_public_error() -> None:
    settings = load_settings({**ENV, "PROXY_PORT": str(free_port())})
    client = ProxyClient(settings)
    try:
        with pytest.raises(ProxyUnavailableError, match=r"not reachable \(connection refused\)"):
            client.forward(CHAT)
        with pytest.raises(ProxyUnavailableError, match=r"did not become ready within 0\.3 s"):
            client.wait_ready(0.3)
    finally:
        client.close()
    with pytest.raises(ProxyUnavailableError, match="shutting down"):
        client.forward(CHAT)


def test_wait_ready_polls_until_ready_and_honours_check(
    fake_proxy: FakeProxy, client: ProxyClient
) -> None:
    answers = iter([503, 503, 200])

    async def readyz(_request: web.Request) -> web.Response:
        status = next(answers)
        return web.json_response({"status": "ready" if status == 200 else "pulling"}, status=status)

    fake_proxy.routes["GET", "/readyz"] = readyz
    client.wait_ready(10)
    assert [p for _, p, _, _ in fake_proxy.seen] == ["/readyz"] * 3

    def give_up() -> None:
        raise RuntimeError("launcher gave up")

    with pytest.raises(RuntimeError, match="launcher gave up"):
        client.wait_ready(10, check=give_up)


def test_degraded_with_settled_models_counts_as_ready(
    fake_proxy: FakeProxy, client: ProxyClient
) -> None:
    body = {
        "status": "degraded",
        "ollama": {"state": "up"},
        "models": {"a:latest": {"state": "ready"}, "b:latest": {"state": "failed"}},
    }

    async def readyz(_request: web.Request) -> web.Response:
        return web.json_response(body, status=503)

    fake_proxy.routes["GET", "/readyz"] = readyz
    client.wait_ready(5)


def test_wait_ready_fails_fast_when_ollama_failed_for_good(
    fake_proxy: FakeProxy, client: ProxyClient
) -> None:
    body = {"status": "degraded", "ollama": {"state": "failed", "reason": "exited with status 1"}}

    async def readyz(_request: web.Request) -> web.Response:
        return web.json_response(body, status=503)

    fake_proxy.routes["GET", "/readyz"] = readyz
    with pytest.raises(ProxyUnavailableError, match="cannot start Ollama: exited with status 1"):
        client.wait_ready(60)


def test_connection_closed_before_an_answer_is_retried_once(
    fake_proxy: FakeProxy, client: ProxyClient
) -> None:
    calls: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(1)
        if len(calls) % 2 == 1 and request.transport is not None:
            request.transport.close()  # what a stale keep-alive connection looks like
        return web.json_response({"object": "list", "data": []})

    fake_proxy.routes["POST", "/v1/embeddings"] = handler
    assert client.forward({"model": "all-minilm:l6-v2", "input": "x"}).startswith("{")
    assert len(calls) == 2
