"""The request processes' client of the proxy, against a scripted fake proxy.

What the proxy answers to good and bad payloads is proven in ``test_same_verdict.py`` against
the real proxy; here the client's own duties: the endpoint choice, the one payload change (token
usage for streamed chats), relaying, the start-up wait, failing fast while the proxy starts, and
what it says when the proxy cannot be reached.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import warnings

import pytest
from aiohttp import web

from proxy.catalog import Catalog
from proxy.client import ProxyClient
from proxy.sse import SSEDecoder, SSEEvent
from proxy.state import Phase
from proxy.testing.harness import free_port
from proxy.ubiops_request import ProxyUnavailableError, RequestFailedError, route
from tests.deployment.conftest import CHAT, ENV, KEY, FakeProxy, make_client, posted, readiness

CATALOG = Catalog.parse(
    ENV["OLLAMA_CHAT_MODELS"], ENV["OLLAMA_EMBEDDING_MODELS"], "mini=all-minilm:l6-v2"
)

# --- the endpoint --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        (CHAT, "/v1/chat/completions"),
        ({"model": "smollm2:135m", "prompt": "Once"}, "/v1/completions"),
        ({"model": "all-minilm:l6-v2", "input": "x"}, "/v1/embeddings"),
        ({"model": "ubiops-deployment/d/v/mini", "input": ["x"]}, "/v1/embeddings"),
        ({"model": "smollm2:135m", "input": "Hi"}, "/v1/responses"),
        ({"model": "ubiops-deployment/d/v/qwen", "input": [{"role": "user"}]}, "/v1/responses"),
        ({"model": "unknown", "input": "x"}, "/v1/embeddings"),
        ({"model": ["smollm2:135m"], "input": "x"}, "/v1/embeddings"),
        ({"model": "smollm2:135m", "endpoint": "/v1/messages", "messages": []}, "/v1/messages"),
        ({"model": "x", "messages": [], "prompt": "p"}, "/v1/chat/completions"),
        ({"model": "x"}, "/v1/chat/completions"),
        ("not json", "/v1/chat/completions"),
        ("[1]", "/v1/chat/completions"),
    ],
)
def test_the_endpoint_follows_the_input_field_and_the_models_kind(
    payload: object, path: str
) -> None:
    body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
    assert route(body, CATALOG).endpoint.path == path


def test_an_endpoint_field_is_taken_out_and_must_name_a_reachable_endpoint(
    fake_proxy: FakeProxy, client: ProxyClient
) -> None:
    async def answer(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    fake_proxy.routes["POST", "/v1/messages"] = answer
    hinted = {"endpoint": "/v1/messages", "model": "qwen", "max_tokens": 9, "messages": []}
    client.forward({**hinted, "note": "h\u00e9"})
    assert json.loads(posted(fake_proxy)[0]) == {
        "model": "qwen",
        "max_tokens": 9,
        "messages": [],
        "note": "h\u00e9",
    }
    for wrong in ("/api/chat", "/v1/models", 7, None):
        with pytest.raises(RequestFailedError, match="'endpoint' field must be one of") as info:
            client.forward({**hinted, "endpoint": wrong})
        assert "/v1/messages" in info.value.public_error_message
        assert info.value.status == 400
    assert len(posted(fake_proxy)) == 1, "nothing sent for a wrong endpoint field"


def test_text_is_sent_as_it_came_and_a_dict_is_dumped_once(
    fake_proxy: FakeProxy, client: ProxyClient
) -> None:
    async def answer(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    fake_proxy.routes["POST", "/v1/chat/completions"] = answer
    text = '{"model": "smollm2:135m",   "messages": [{"role":"user","content":"h\\u00e9"}]}'
    client.forward(text)
    client.forward({**CHAT, "stream": False})
    sent = posted(fake_proxy)
    assert sent[0] == text.encode()
    assert json.loads(sent[1]) == {**CHAT, "stream": False}


@pytest.mark.parametrize("in_a_loop", [False, True], ids=["plain", "inside another event loop"])
def test_a_client_never_closed_closes_its_connection_when_collected(
    fake_proxy: FakeProxy, in_a_loop: bool
) -> None:
    # As ubiops.utils.run_local leaves it (no stop()); the garbage collector may run the
    # finaliser anywhere, an async program's event loop included.
    async def answer(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    fake_proxy.routes["GET", "/readyz"] = readiness(Phase.READY, True)  # type: ignore[assignment]
    fake_proxy.routes["POST", "/v1/chat/completions"] = answer
    client = make_client(fake_proxy.port)
    client.forward(CHAT)
    unraisable: list[sys.UnraisableHookArgs] = []

    def collect() -> None:
        nonlocal client
        del client
        gc.collect()

    async def collect_in_a_loop() -> None:
        collect()

    hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if in_a_loop:
                asyncio.run(collect_in_a_loop())
            else:
                collect()
            gc.collect()
    finally:
        sys.unraisablehook = hook
    assert not unraisable, [f"{u.exc_type.__name__}: {u.exc_value}" for u in unraisable]
    assert not [w for w in caught if issubclass(w.category, ResourceWarning | RuntimeWarning)]


def test_what_cannot_be_json_is_refused_before_sending(client: ProxyClient) -> None:
    with pytest.raises(RequestFailedError, match="cannot be sent as JSON"):
        client.forward({"model": object()})


# --- SSE decoding --------------------------------------------------------------------------


def test_sse_decoder_handles_split_frames_and_line_endings() -> None:
    stream = b'data: {"a":1}\n\ndata:{"b":2}\r\n\r\n: comment\n\nevent: x\ndata: l1\ndata: l2\r\r\n'
    decoder = SSEDecoder()
    events = [event for i in range(len(stream)) for event in decoder.feed(stream[i : i + 1])]
    assert events == [
        SSEEvent("message", '{"a":1}'),
        SSEEvent("message", '{"b":2}'),
        SSEEvent("x", "l1\nl2"),
    ]


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
    assert (method, path) == ("POST", "/v1/chat/completions")
    assert json.loads(body) == {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    assert headers["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        (
            '  {"model": "m", "messages": [], "stream": true}',
            '  {"stream_options":{"include_usage":true},"model": "m", "messages": [], '
            '"stream": true}',
        ),
        (
            '{"model": "m", "messages": [], "stream": true, "stream_options": {}}',
            '{"model": "m", "messages": [], "stream": true, "stream_options": {}}',
        ),
        (
            '{"model": "m", "messages": [], "stream": true, '
            '"stream_options": {"include_usage": false}}',
            '{"model": "m", "messages": [], "stream": true, '
            '"stream_options": {"include_usage": false}}',
        ),
        ('{"model": "m", "messages": []}', '{"model": "m", "messages": []}'),
        (
            '{"model": "m", "prompt": "p", "stream": true}',
            '{"model": "m", "prompt": "p", "stream": true}',
        ),
    ],
)
def test_only_a_streamed_chat_without_stream_options_asks_for_usage(
    fake_proxy: FakeProxy, client: ProxyClient, text: str, sent: str
) -> None:
    async def answer(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    for path in ("/v1/chat/completions", "/v1/completions"):
        fake_proxy.routes["POST", path] = answer

    client.forward(text)

    assert posted(fake_proxy) == [sent.encode()], "spliced into the text, nothing re-serialised"


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


def test_the_proxys_error_message_is_the_public_error_message(
    fake_proxy: FakeProxy, client: ProxyClient
) -> None:
    async def handler(_request: web.Request) -> web.Response:
        body = {"error": {"message": "model 'qwen' is not available yet (pulling)"}}
        return web.json_response(body, status=503)

    fake_proxy.routes["POST", "/v1/completions"] = handler
    with pytest.raises(RequestFailedError) as info:
        client.forward({"model": "qwen", "prompt": "x"})
    assert info.value.public_error_message == "model 'qwen' is not available yet (pulling)"
    assert info.value.status == 503


def test_mid_stream_error_event_fails_the_request_after_relaying_what_came(
    fake_proxy: FakeProxy, client: ProxyClient
) -> None:
    error = '{"error": {"message": "Ollama went away", "type": "api_error"}}'
    fake_proxy.routes["POST", "/v1/chat/completions"] = _stream_handler(  # type: ignore[assignment]
        _sse('{"id":"1","choices":[]}', error)
    )
    seen: list[str] = []
    with pytest.raises(RequestFailedError) as info:
        client.forward({**CHAT, "stream": True}, seen.append)
    assert info.value.public_error_message == "The answer failed after 1 chunks: Ollama went away"
    assert seen == ['{"id":"1","choices":[]}']


def test_stream_without_done_is_reported_incomplete(
    fake_proxy: FakeProxy, client: ProxyClient
) -> None:
    fake_proxy.routes["POST", "/v1/chat/completions"] = _stream_handler(  # type: ignore[assignment]
        _sse('{"id":"1","choices":[]}')
    )
    with pytest.raises(RequestFailedError, match="ended the stream early"):
        client.forward({**CHAT, "stream": True})


def _named(*events: tuple[str, str]) -> bytes:
    return b"".join(f"event: {name}\ndata: {data}\n\n".encode() for name, data in events)


RESPONSES = [
    ("response.created", '{"type":"response.created","response":{"status":"in_progress"}}'),
    ("response.output_text.delta", '{"type":"response.output_text.delta","delta":"Hi"}'),
    ("response.completed", '{"type":"response.completed","response":{"status":"completed"}}'),
]
MESSAGES = [
    ("message_start", '{"type":"message_start","message":{"role":"assistant"}}'),
    ("content_block_delta", '{"type":"content_block_delta","delta":{"text":"Hi"}}'),
    ("message_delta", '{"type":"message_delta","usage":{"output_tokens":1}}'),
    ("message_stop", '{"type":"message_stop"}'),
]
RESPONSES_CALL = {"model": "qwen", "input": "Hi", "stream": True}
MESSAGES_CALL = {"endpoint": "/v1/messages", **CHAT, "max_tokens": 8, "stream": True}


@pytest.mark.parametrize(
    ("payload", "path", "events"),
    [(RESPONSES_CALL, "/v1/responses", RESPONSES), (MESSAGES_CALL, "/v1/messages", MESSAGES)],
)
def test_named_event_streams_are_relayed_to_their_last_event(
    fake_proxy: FakeProxy,
    client: ProxyClient,
    payload: dict[str, object],
    path: str,
    events: list[tuple[str, str]],
) -> None:
    fake_proxy.routes["POST", path] = _stream_handler(_named(*events))  # type: ignore[assignment]
    seen: list[str] = []
    output = client.forward(payload, seen.append)
    assert seen == [data for _, data in events], "every event's data, the last one included"
    assert json.loads(output) == [json.loads(data) for _, data in events]

    fake_proxy.routes["POST", path] = _stream_handler(_named(*events[:-1]))  # type: ignore[assignment]
    with pytest.raises(RequestFailedError, match="without its final event"):
        client.forward(payload)


@pytest.mark.parametrize(
    ("payload", "path", "failure"),
    [
        (
            RESPONSES_CALL,
            "/v1/responses",
            (
                "error",
                '{"type":"error","message":"Ollama went away",'
                '"error":{"message":"Ollama went away"}}',
            ),
        ),
        (
            RESPONSES_CALL,
            "/v1/responses",
            (
                "response.failed",
                '{"type":"response.failed","response":{"error":{"message":"Ollama went away"}}}',
            ),
        ),
        (
            MESSAGES_CALL,
            "/v1/messages",
            ("error", '{"type":"error","error":{"type":"api_error","message":"Ollama went away"}}'),
        ),
    ],
)
def test_a_named_error_event_fails_the_request_after_relaying_what_came(
    fake_proxy: FakeProxy,
    client: ProxyClient,
    payload: dict[str, object],
    path: str,
    failure: tuple[str, str],
) -> None:
    first = RESPONSES[0] if path == "/v1/responses" else MESSAGES[0]
    fake_proxy.routes["POST", path] = _stream_handler(_named(first, failure))  # type: ignore[assignment]
    seen: list[str] = []
    with pytest.raises(RequestFailedError) as info:
        client.forward(payload, seen.append)
    assert info.value.public_error_message == "The answer failed after 1 chunks: Ollama went away"
    assert seen == [first[1]]


def test_a_proxy_that_does_not_answer_yet_is_starting() -> None:
    client = make_client(free_port(), READY_TIMEOUT="0.3")
    try:
        with pytest.raises(ProxyUnavailableError, match="starting and does not answer yet"):
            client.forward(CHAT)
        assert client.wait_started().startswith("not serving after 0.3 s: not answering")
    finally:
        client.close()
    with pytest.raises(ProxyUnavailableError, match="shutting down"):
        client.forward(CHAT)


def test_a_proxy_gone_after_it_served_is_unreachable(
    fake_proxy: FakeProxy, client: ProxyClient
) -> None:
    assert client.wait_started() == "serving"
    fake_proxy.stop()

    with pytest.raises(ProxyUnavailableError, match=r"not reachable \(connection refused\)"):
        client.forward(CHAT)


def test_wait_started_polls_until_serving_and_honours_check(
    fake_proxy: FakeProxy, client: ProxyClient
) -> None:
    answers = iter(
        [readiness(Phase.STARTING, False), readiness(Phase.PULLING, False, reason="a loading")]
    )
    serving = readiness(Phase.DEGRADED, True, reason="b failed: gone")

    async def readyz(request: web.Request) -> web.StreamResponse:
        return await next(answers, serving)(request)  # type: ignore[operator]

    fake_proxy.routes["GET", "/readyz"] = readyz
    assert client.wait_started() == "serving", "degraded but serving is serving"
    assert [p for _, p, _, _ in fake_proxy.seen] == ["/readyz"] * 3

    def give_up() -> None:
        raise RuntimeError("launcher gave up")

    with pytest.raises(RuntimeError, match="launcher gave up"):
        client.wait_started(check=give_up)


def test_a_secret_in_an_error_is_redacted(fake_proxy: FakeProxy, client: ProxyClient) -> None:
    async def handler(_request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": f"echo {KEY}"}}, status=400)

    fake_proxy.routes["POST", "/v1/chat/completions"] = handler
    with pytest.raises(RequestFailedError) as info:
        client.forward(CHAT)
    assert info.value.public_error_message == "echo [redacted]"
    assert KEY not in str(info.value)


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
