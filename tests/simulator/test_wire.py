"""Byte-level framing, headers and error bodies, checked with a raw HTTP client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from proxy.testing.services import SimulatorProcess
from proxy.testing.simulator import VERSION, expected_tokens
from tests.clients import CLIENT_TIMEOUT

from .conftest import CHAT_MODEL, EMBED_MODEL


@pytest.fixture
async def http(shared_sim: SimulatorProcess) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=shared_sim.url, timeout=CLIENT_TIMEOUT) as session:
        yield session


async def test_liveness_and_version(http: aiohttp.ClientSession) -> None:
    async with http.get("/") as resp:
        assert resp.status == 200
        assert await resp.text() == "Ollama is running"
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    async with http.head("/") as resp:
        assert resp.status == 200
    async with http.get("/api/version") as resp:
        assert await resp.json() == {"version": VERSION}
    async with http.head("/api/tags") as resp:
        assert resp.status == 200


async def test_ndjson_stream_framing(http: aiohttp.ClientSession) -> None:
    body = {"model": CHAT_MODEL, "prompt": "frame"}
    async with http.post("/api/generate", json=body) as resp:
        assert resp.headers["Content-Type"] == "application/x-ndjson"
        assert resp.headers["Transfer-Encoding"] == "chunked"
        raw = await resp.read()
    lines = raw.decode().split("\n")
    assert lines[-1] == ""
    assert all(lines[:-1])
    chunks = [json.loads(line) for line in lines[:-1]]
    assert list(chunks[0]) == ["model", "created_at", "response", "done"]
    assert chunks[0]["created_at"].endswith("Z")
    assert [c["response"] for c in chunks[:-1]] == expected_tokens(CHAT_MODEL, "frame", 12)
    assert list(chunks[-1])[:6] == [
        "model",
        "created_at",
        "response",
        "done",
        "done_reason",
        "context",
    ]


async def test_sse_stream_framing(http: aiohttp.ClientSession) -> None:
    messages = [{"role": "user", "content": "hi"}]
    body = {"model": CHAT_MODEL, "messages": messages, "stream": True}
    async with http.post("/v1/chat/completions", json=body) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        raw = (await resp.read()).decode()
    events = raw.split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert chunks[0]["choices"][0] == {
        "index": 0,
        "delta": {
            "role": "assistant",
            "content": expected_tokens(CHAT_MODEL, messages, 1)[0],
        },
        "finish_reason": None,
    }
    assert chunks[-1]["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "stop"}
    ]
    assert "usage" not in chunks[0]


async def test_non_stream_content_types(http: aiohttp.ClientSession) -> None:
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False}
    async with http.post("/api/chat", json=body) as resp:
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    async with http.post("/v1/chat/completions", json=body) as resp:
        assert resp.headers["Content-Type"] == "application/json"
        assert (await resp.read()).endswith(b"}\n")


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/api/chat", b"", 400, "missing request body"),
        (
            "/api/chat",
            b"{nope",
            400,
            "invalid character 'n' looking for beginning of object key string",
        ),
        ("/api/chat", b"[oops", 400, "invalid character 'o' looking for beginning of value"),
        ("/api/chat", b'{"model": "x"', 400, "unexpected EOF"),
        ("/api/chat", b'{"model": ""}', 400, "model is required"),
        ("/api/generate", b'{"model": ""}', 404, "model '' not found"),
        (
            "/api/chat",
            b'{"model": "x", "stream": "yes"}',
            400,
            "json: cannot unmarshal string into Go struct field ChatRequest.stream of type bool",
        ),
        (
            "/api/generate",
            b'{"model": "all-minilm", "prompt": "x"}',
            400,
            '"all-minilm" does not support generate',
        ),
        ("/api/embed", b'{"model": "all-minilm", "input": [1]}', 400, "invalid input type"),
        (
            "/api/embeddings",
            b'{"model": "absent", "prompt": "x"}',
            404,
            'model "absent" not found, try pulling it first',
        ),
        ("/api/pull", b'{"model": "a//b"}', 400, "invalid model name"),
        (
            "/api/generate",
            b'{"model": "smollm2:135m", "keep_alive": "soon"}',
            400,
            'time: invalid duration "soon"',
        ),
    ],
)
async def test_native_errors(
    http: aiohttp.ClientSession, path: str, body: bytes, status: int, error: str
) -> None:
    async with http.post(path, data=body) as resp:
        assert resp.status == status
        assert await resp.json() == {"error": error}


async def test_openai_errors(http: aiohttp.ClientSession) -> None:
    async with http.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": []}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == {
            "message": "invalid input",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    bad = {"model": EMBED_MODEL, "input": "x", "encoding_format": "int8"}
    async with http.post("/v1/embeddings", json=bad) as resp:
        assert resp.status == 400
        assert "encoding_format" in (await resp.json())["error"]["message"]


async def test_gin_not_found_and_method_not_allowed(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/nothing") as resp:
        assert resp.status == 404
        assert await resp.text() == "404 page not found"
    async with http.get("/api/chat") as resp:
        assert resp.status == 405
        assert await resp.text() == "405 method not allowed"


async def test_embed_empty_input_loads_the_model(http: aiohttp.ClientSession) -> None:
    async with http.post("/api/embed", json={"model": EMBED_MODEL}) as resp:
        assert await resp.json() == {"model": EMBED_MODEL, "embeddings": []}
    async with http.get("/api/ps") as resp:
        assert "all-minilm:latest" in [m["name"] for m in (await resp.json())["models"]]
