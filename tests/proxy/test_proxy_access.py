"""Authentication, management routes, request ids, metrics and the access log."""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
import ollama
import pytest
import structlog
from proxy_support import ADMIN_KEY, API_KEY, CHAT, EMBED, MESSAGES, Proxy, serve_proxy

from proxy.appkeys import METRICS
from proxy.testing.services import SimulatorProcess
from tests.clients import CLIENT_TIMEOUT_SECONDS

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHAT_BODY = {"model": CHAT, "messages": MESSAGES, "stream": False}
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/chat/completions", CHAT_BODY),
    ("POST", "/v1/completions", {"model": CHAT, "prompt": "hi"}),
    ("POST", "/v1/embeddings", {"model": EMBED, "input": "hi"}),
    ("GET", "/v1/models", None),
    ("GET", f"/v1/models/{CHAT}", None),
    ("POST", "/api/chat", CHAT_BODY),
    ("POST", "/api/generate", {"model": CHAT, "prompt": "hi", "stream": False}),
    ("POST", "/api/embed", {"model": EMBED, "input": "hi"}),
    ("POST", "/api/embeddings", {"model": EMBED, "prompt": "hi"}),
    ("POST", "/api/show", {"model": CHAT}),
    ("GET", "/api/tags", None),
    ("GET", "/api/ps", None),
    ("GET", "/api/version", None),
    ("GET", "/", None),
    ("POST", "/api/pull", {"model": CHAT}),
    ("POST", "/api/push", {"model": CHAT}),
    ("DELETE", "/api/delete", {"model": CHAT}),
    ("POST", "/api/create", {"model": "x", "from": CHAT}),
    ("POST", "/api/copy", {"source": CHAT, "destination": "y"}),
    ("POST", "/api/blobs/sha256:00", None),
    ("GET", "/metrics", None),
    ("GET", "/no/such/route", None),
]
MANAGEMENT = [route for route in ROUTES if route[1] in {
    "/api/pull", "/api/push", "/api/delete", "/api/create", "/api/copy", "/api/blobs/sha256:00"
}]  # fmt: skip


def assert_error_shape(path: str, document: dict[str, Any]) -> str:
    """The message of an error document, checking it is in ``path``'s API shape."""
    if path.startswith("/v1/"):
        error = document["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str)
        return str(error["message"])
    assert set(document) == {"error"}
    assert isinstance(document["error"], str)
    return document["error"]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize("key", [None, "wrong-key-0123456789abcdef", f"Basic {API_KEY}"])
async def test_every_route_needs_the_key(
    proxy: Proxy,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    key: str | None,
) -> None:
    headers = {}
    if key is not None:
        headers["Authorization"] = key if key.startswith("Basic") else f"Bearer {key}"
    async with http.request(method, proxy.url + path, json=body, headers=headers) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.headers["Content-Type"] == "application/json"
        message = assert_error_shape(path, await response.json())
    assert "key" in message
    if path.startswith("/v1/"):
        assert (await response.json())["error"]["code"] == "invalid_api_key"


async def test_head_root_needs_the_key(proxy: Proxy, http: aiohttp.ClientSession) -> None:
    async with http.head(proxy.url + "/") as response:
        assert response.status == 401


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_health_routes_are_open(proxy: Proxy, http: aiohttp.ClientSession, path: str) -> None:
    async with http.get(proxy.url + path) as response:
        assert response.status == 200
        document = await response.json()
    if path == "/readyz":
        assert document == {"status": "ready", "ready": True, "gave_up": False}, "no details"
        async with http.get(proxy.url + path, headers=proxy.headers) as response:
            detailed = await response.json()
        assert detailed["ready"] is True
        assert detailed["models"][CHAT]["state"] == "ready"


async def test_readyz_is_503_until_ready(
    sim: SimulatorProcess, http: aiohttp.ClientSession
) -> None:
    from proxy_support import CATALOG

    from proxy.state import InstanceState

    async with (
        serve_proxy(sim.url, state=InstanceState(CATALOG.models)) as starting,
        http.get(starting.url + "/readyz") as response,
    ):
        assert response.status == 503
        assert (await response.json())["status"] == "starting"


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {API_KEY}"},
        {"authorization": f"bearer {API_KEY}"},
        {"x-api-key": API_KEY},
        {"Authorization": "Token ubiops-service", "x-api-key": API_KEY},
        {"Authorization": f"Bearer {ADMIN_KEY}"},  # the admin key works everywhere
    ],
)
async def test_accepted_key_forms(
    proxy: Proxy, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    async with http.get(proxy.url + "/api/tags", headers=headers) as response:
        assert response.status == 200


@pytest.mark.parametrize(("method", "path", "body"), MANAGEMENT)
async def test_management_is_refused_with_the_api_key(
    proxy: Proxy, http: aiohttp.ClientSession, method: str, path: str, body: dict[str, Any] | None
) -> None:
    async with http.request(method, proxy.url + path, json=body, headers=proxy.headers) as response:
        assert response.status == 403
        message = assert_error_shape(path, await response.json())
    assert "admin key" in message


async def test_management_is_refused_when_no_admin_key_is_set(
    sim: SimulatorProcess, http: aiohttp.ClientSession
) -> None:
    async with (
        serve_proxy(sim.url, proxy_admin_key=None) as running,
        http.post(
            running.url + "/api/pull", json={"model": CHAT}, headers=running.headers
        ) as response,
    ):
        assert response.status == 403
        assert "PROXY_ADMIN_KEY" in (await response.json())["error"]


async def test_management_is_forwarded_with_the_admin_key(proxy: Proxy) -> None:
    admin = ollama.AsyncClient(
        host=proxy.url,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=CLIENT_TIMEOUT_SECONDS,
    )
    progress = [part async for part in await admin.pull("smollm:360m", stream=True)]
    assert progress[0].status == "pulling manifest"
    assert progress[-1].status == "success"
    assert (await admin.copy(CHAT, "my-copy:1")).status == "success"
    assert (await admin.delete("my-copy:1")).status == "success"
    with pytest.raises(ollama.ResponseError) as caught:
        await admin.delete("my-copy:1")
    assert caught.value.status_code == 404  # Ollama's own answer, passed through


async def test_open_mode_needs_no_key_but_still_guards_management(
    sim: SimulatorProcess, http: aiohttp.ClientSession
) -> None:
    async with serve_proxy(sim.url, proxy_api_key=None, proxy_admin_key=None) as running:
        async with http.post(running.url + "/api/chat", json=CHAT_BODY) as response:
            assert response.status == 200
        async with http.get(running.url + "/metrics") as response:
            assert response.status == 200
        async with http.post(running.url + "/api/pull", json={"model": CHAT}) as response:
            assert response.status == 403


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/chat", CHAT_BODY),  # whole
        ("POST", "/api/chat", {"model": CHAT, "messages": MESSAGES}),  # streamed
        ("POST", "/v1/chat/completions", {"model": "nope", "messages": MESSAGES}),  # error
        ("GET", "/healthz", None),
    ],
)
async def test_request_id_is_echoed(
    proxy: Proxy, http: aiohttp.ClientSession, method: str, path: str, body: dict[str, Any] | None
) -> None:
    headers = {**proxy.headers, "X-Request-ID": "req-1234.abc"}
    async with http.request(method, proxy.url + path, json=body, headers=headers) as response:
        assert response.headers["X-Request-ID"] == "req-1234.abc"
    async with http.request(method, proxy.url + path, json=body, headers=proxy.headers) as response:
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])
    bad = {**proxy.headers, "X-Request-ID": "x" * 500}
    async with http.request(method, proxy.url + path, json=body, headers=bad) as response:
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


async def test_metrics(proxy: Proxy, http: aiohttp.ClientSession) -> None:
    async with http.post(proxy.url + "/api/chat", json=CHAT_BODY, headers=proxy.headers) as r:
        assert r.status == 200
    async with http.post(
        proxy.url + "/api/chat", json={"model": CHAT, "messages": MESSAGES}, headers=proxy.headers
    ) as r:
        await r.read()
    proxy.app[METRICS].observe_pull(CHAT, 12.5, "success")
    async with http.get(proxy.url + "/metrics") as response:
        assert response.status == 401
        assert set(await response.json()) == {"error"}  # plain JSON
    async with http.get(proxy.url + "/metrics", headers=proxy.headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    for expected in (
        f'proxy_requests_total{{key="default",model="{CHAT}",route="/api/chat",status="200"}}',
        'proxy_requests_total{key="local",model="",route="/metrics",status="401"}',
        'proxy_request_duration_seconds_bucket{le="0.005",route="/api/chat"}',
        'proxy_time_to_first_chunk_seconds_count{route="/api/chat"}',
        "proxy_requests_in_flight 0.0",
        "proxy_requests_queued 0.0",
        "proxy_ollama_restarts_total 0.0",
        "proxy_ready 1.0",
        f'proxy_model_servable{{model="{CHAT}"}} 1.0',
        f'proxy_model_requests_in_flight{{model="{CHAT}"}} 0.0',
        f'proxy_model_loaded{{model="{CHAT}"}}',
        f'proxy_completion_tokens_total{{key="default",model="{CHAT}"}}',
        f'proxy_time_to_first_token_seconds_count{{key="default",model="{CHAT}"}}',
        f'proxy_queue_wait_seconds_count{{key="default",model="{CHAT}"}}',
        f'proxy_model_pull_duration_seconds_count{{model="{CHAT}",outcome="success"}} 1.0',
    ):
        assert expected in text


async def test_one_access_log_event_per_request_and_no_secret(
    proxy: Proxy, http: aiohttp.ClientSession
) -> None:
    wrong = "wrong-secret-0123456789abcdef"
    with structlog.testing.capture_logs([structlog.contextvars.merge_contextvars]) as events:
        async with http.post(
            proxy.url + "/api/chat",
            json={"model": CHAT, "messages": MESSAGES},
            headers={**proxy.headers, "X-Request-ID": "stream-1"},
        ) as response:
            await response.read()
        async with http.get(
            proxy.url + "/api/tags", headers={"Authorization": f"Bearer {wrong}"}
        ) as response:
            assert response.status == 401
        async with http.get(
            proxy.url + "/api/tags", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ) as response:
            assert response.status == 200
    access = [e for e in events if e["event"] == "request"]
    assert len(access) == 3
    stream = access[0]
    assert stream["request_id"] == "stream-1"
    assert stream["route"] == "/api/chat"
    assert stream["model"] == CHAT
    assert stream["status"] == 200
    assert stream["chunks"] >= 1
    assert stream["bytes"] > 0
    assert 0 < stream["ttfc_ms"] <= stream["latency_ms"]
    assert access[1]["status"] == 401
    logged = json.dumps(events, default=str)
    for secret in (API_KEY, ADMIN_KEY, wrong):
        assert secret not in logged
