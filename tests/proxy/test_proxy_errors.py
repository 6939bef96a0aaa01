"""Error answers in each API's own shape: 400, 404, 405, 413, 429, 503 and 504."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import ollama
import openai
import pytest
from proxy_support import API_KEY, CHAT, CHAT2, EMBED, MESSAGES, Proxy, serve_proxy, simulator

from proxy.appkeys import ADMISSION
from proxy.state import ModelStatus, OllamaStatus
from proxy.testing.harness import await_until, free_port
from proxy.testing.services import SimulatorProcess
from tests.clients import CLIENT_TIMEOUT_SECONDS

pytestmark = pytest.mark.asyncio(loop_scope="module")

OPENAI_CHAT = "/v1/chat/completions"
OLLAMA_CHAT = "/api/chat"
QUEUE_WAIT = 10.0  # seconds a request may take to reach the queue or leave the slot


async def post(
    http: aiohttp.ClientSession, proxy: Proxy, path: str, body: Any, **kwargs: Any
) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    """Status, JSON document and headers of one POST."""
    if isinstance(body, (bytes, str)):
        kwargs["data"] = body
    else:
        kwargs["json"] = body
    async with http.post(proxy.url + path, headers=proxy.headers, **kwargs) as response:
        return response.status, await response.json(), response.headers


_OPENAI_TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",  # an unknown model (an unknown route is "not_found_error")
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def message_of(path: str, document: dict[str, Any], *, status: int) -> str:
    """The error message, checking the document has ``path``'s API shape."""
    if path.startswith("/v1/"):
        error = document["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == _OPENAI_TYPES.get(status, "api_error")
        return str(error["message"])
    assert set(document) == {"error"}
    return str(document["error"])


BAD_BODIES: list[tuple[str, Any, str]] = [
    (OPENAI_CHAT, b"{not json", "not valid JSON"),
    (OPENAI_CHAT, b"", "empty"),
    (OPENAI_CHAT, [1, 2], "must be a JSON object"),
    (OPENAI_CHAT, {"messages": MESSAGES}, "`model` is missing"),
    (OPENAI_CHAT, {"model": 3, "messages": MESSAGES}, "`model` must be a string"),
    (OPENAI_CHAT, {"model": CHAT, "messages": "hi"}, "`messages` must be an array"),
    (OPENAI_CHAT, {"model": CHAT}, "`messages` is required"),
    (OPENAI_CHAT, {"model": CHAT, "messages": MESSAGES, "stream": "yes"}, "`stream` must be a"),
    ("/v1/completions", {"model": CHAT, "prompt": ["a"]}, "`prompt` must be a string"),
    ("/v1/embeddings", {"model": EMBED, "input": 5}, "`input` must be a string or an array"),
    ("/v1/embeddings", {"model": CHAT, "input": "x"}, "is a chat model"),
    (OPENAI_CHAT, {"model": EMBED, "messages": MESSAGES}, "is an embedding model"),
    ("/v1/completions", {"model": EMBED, "prompt": "x"}, "is an embedding model"),
    (OLLAMA_CHAT, b"[", "not valid JSON"),
    (OLLAMA_CHAT, {"model": CHAT, "stream": 1}, "`stream` must be a boolean"),
    (OLLAMA_CHAT, {"model": CHAT, "messages": {}}, "`messages` must be an array"),
    ("/api/generate", {"model": CHAT, "prompt": 1}, "`prompt` must be a string"),
    ("/api/generate", {"model": EMBED, "prompt": "x"}, "is an embedding model"),
    ("/api/embed", {"model": CHAT, "input": "x"}, "is a chat model"),
    ("/api/embed", {"model": EMBED, "input": {"a": 1}}, "`input` must be a string or an array"),
    ("/api/embeddings", {"model": CHAT2, "prompt": "x"}, "is a chat model"),
    ("/api/show", {"name": 7}, "`name` must be a string"),
]


@pytest.mark.parametrize(("path", "body", "fragment"), BAD_BODIES)
async def test_bad_requests_are_400(
    proxy: Proxy, http: aiohttp.ClientSession, path: str, body: Any, fragment: str
) -> None:
    status, document, _ = await post(http, proxy, path, body)
    assert status == 400
    assert fragment in message_of(path, document, status=400)


@pytest.mark.parametrize("path", [OPENAI_CHAT, OLLAMA_CHAT, "/api/show", "/v1/embeddings"])
async def test_unknown_model_is_404_listing_the_models(
    proxy: Proxy, http: aiohttp.ClientSession, path: str
) -> None:
    status, document, _ = await post(
        http, proxy, path, {"model": "llama3:70b", "messages": [], "input": "x"}
    )
    assert status == 404
    message = message_of(path, document, status=404)
    assert "'llama3:70b'" in message
    for name in (CHAT, CHAT2, "gpt-4o-mini"):
        assert name in message
    if path.startswith("/v1/"):
        assert document["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("path", [OPENAI_CHAT, OLLAMA_CHAT, "/v1/responses", "/v1/messages"])
async def test_a_cloud_model_is_refused_in_the_apis_shape_saying_why(
    proxy: Proxy, http: aiohttp.ClientSession, path: str
) -> None:
    body = {"model": "gpt-oss:120b-cloud", "messages": MESSAGES, "input": "x", "max_tokens": 8}
    status, document, _ = await post(http, proxy, path, body)
    assert status == 404
    if path == "/v1/messages":
        assert document["type"] == "error"
        assert document["error"]["type"] == "not_found_error"
        message = document["error"]["message"]
    else:
        message = message_of(path, document, status=404)
    assert "'gpt-oss:120b-cloud' is an ollama.com cloud model" in message
    assert CHAT in message


async def test_the_clients_raise_their_own_errors(proxy: Proxy) -> None:
    client = openai.AsyncOpenAI(
        base_url=f"{proxy.url}/v1", api_key=API_KEY, max_retries=0, timeout=CLIENT_TIMEOUT_SECONDS
    )
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="nope", messages=MESSAGES)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.embeddings.create(model=CHAT, input="x")
    assert caught.value.param == "model"
    with pytest.raises(openai.AuthenticationError):
        await openai.AsyncOpenAI(
            base_url=f"{proxy.url}/v1",
            api_key="wrong-key-0123456789",
            max_retries=0,
            timeout=CLIENT_TIMEOUT_SECONDS,
        ).models.list()
    native = ollama.AsyncClient(
        host=proxy.url,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=CLIENT_TIMEOUT_SECONDS,
    )
    with pytest.raises(ollama.ResponseError) as native_caught:
        await native.chat(EMBED, MESSAGES)
    assert native_caught.value.status_code == 400


async def test_unknown_routes_and_methods(proxy: Proxy, http: aiohttp.ClientSession) -> None:
    for path in ("/v1/nothing", "/api/nothing"):
        async with http.get(proxy.url + path, headers=proxy.headers) as response:
            assert response.status == 404
            document = await response.json()
        if path.startswith("/v1/"):
            assert document["error"]["type"] == "not_found_error"
        else:
            assert set(document) == {"error"}
    async with http.get(proxy.url + OPENAI_CHAT, headers=proxy.headers) as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"
        message_of(OPENAI_CHAT, await response.json(), status=405)


@pytest.mark.parametrize("path", [OPENAI_CHAT, OLLAMA_CHAT])
@pytest.mark.parametrize("chunked", [False, True])
async def test_bodies_over_the_limit_are_413(
    sim: SimulatorProcess, http: aiohttp.ClientSession, path: str, chunked: bool
) -> None:
    big = b'{"model":"%s","messages":[{"role":"user","content":"%s"}]}' % (
        CHAT.encode(),
        b"x" * 4096,
    )

    async def chunks() -> Any:
        yield big[:100]
        yield big[100:]

    async with serve_proxy(sim.url, proxy_max_body=2048) as small:
        async with http.post(
            small.url + path, data=chunks() if chunked else big, headers=small.headers
        ) as response:
            assert response.status == 413
            message = message_of(path, await response.json(), status=413)
        assert "2048 bytes" in message
        # A body under the limit still passes.
        body = {"model": CHAT, "messages": MESSAGES, "stream": False}
        async with http.post(small.url + path, json=body, headers=small.headers) as response:
            assert response.status == 200


async def test_a_model_that_is_not_servable_is_503_and_others_keep_serving(
    sim: SimulatorProcess, http: aiohttp.ClientSession
) -> None:
    async with serve_proxy(sim.url) as degraded:
        degraded.state.set_model(CHAT2, ModelStatus.FAILED, reason="pull failed: disk full")
        for path in (OPENAI_CHAT, OLLAMA_CHAT):
            status, document, headers = await post(
                http, degraded, path, {"model": CHAT2, "messages": MESSAGES, "stream": False}
            )
            assert status == 503
            assert headers["Retry-After"] == "5"
            assert "disk full" in message_of(path, document, status=503)
            status, _, _ = await post(
                http, degraded, path, {"model": CHAT, "messages": MESSAGES, "stream": False}
            )
            assert status == 200
        degraded.state.set_ollama(OllamaStatus.RESTARTING, "exit status 2")
        status, document, _ = await post(
            http, degraded, OLLAMA_CHAT, {"model": CHAT, "messages": MESSAGES}
        )
        assert status == 503
        assert "restarting: exit status 2" in document["error"]


async def test_an_unreachable_ollama_is_503(http: aiohttp.ClientSession) -> None:
    async with serve_proxy(f"http://127.0.0.1:{free_port()}") as orphan:
        for path in (OPENAI_CHAT, OLLAMA_CHAT):
            status, document, headers = await post(
                http, orphan, path, {"model": CHAT, "messages": MESSAGES}
            )
            assert status == 503
            assert headers["Retry-After"] == "2"
            assert "not reachable" in message_of(path, document, status=503)
        async with http.get(orphan.url + "/api/tags", headers=orphan.headers) as response:
            assert response.status == 200  # the catalog is listed without Ollama's details


async def test_a_full_queue_is_429_and_a_short_one_waits(http: aiohttp.ClientSession) -> None:
    """One slot and one place in the queue: a third request is refused at once, and the queued
    one is served as soon as the slot is free.

    Nothing here depends on how fast the machine is: the first request holds the slot with a
    stream far longer than the test, until its client goes away; the test waits for the queue
    to fill rather than for a fixed time.
    """
    body = {"model": CHAT, "messages": MESSAGES}
    short = {"model": CHAT, "prompt": "x", "stream": False, "options": {"num_predict": 2}}
    async with (
        simulator({"SIM_TOKEN_DELAY": "0.05", "SIM_NUM_TOKENS": "100000"}) as slow,
        serve_proxy(slow.url, proxy_max_concurrency=1, proxy_max_queue=1) as busy,
    ):
        guard = busy.app[ADMISSION]
        async with http.post(busy.url + OLLAMA_CHAT, json=body, headers=busy.headers) as first:
            await first.content.readline()  # the slot is taken, for as long as this stream lasts
            queued = asyncio.create_task(post(http, busy, "/api/generate", short))
            await await_until(lambda: guard.queued == 1, QUEUE_WAIT, "a request in the queue")
            assert guard.active == 1
            for path in (OPENAI_CHAT, OLLAMA_CHAT):
                status, document, headers = await post(http, busy, path, {**body, "stream": False})
                assert status == 429
                assert int(headers["Retry-After"]) >= 1  # estimated from service times
                assert "busy" in message_of(path, document, status=429)
            assert not queued.done()
            first.close()  # the client goes away: its stream ends and the slot passes on
        status, document, _ = await queued  # it waited for the slot, then was served
        assert status == 200
        assert document["done"] is True
        await await_until(lambda: guard.active == 0, QUEUE_WAIT, "the slot to be free")
        assert guard.queued == 0


async def test_upstream_timeouts_are_504(http: aiohttp.ClientSession) -> None:
    async with (
        simulator({"SIM_TOKEN_DELAY": "0.5"}) as slow,
        serve_proxy(slow.url, proxy_request_timeout=0.2) as impatient,
    ):
        for path, stream in ((OPENAI_CHAT, False), (OLLAMA_CHAT, False), (OLLAMA_CHAT, True)):
            status, document, _ = await post(
                http, impatient, path, {"model": CHAT, "messages": MESSAGES, "stream": stream}
            )
            assert status == 504
            assert "0.2 s" in message_of(path, document, status=504)
