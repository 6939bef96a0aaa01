"""Fixtures for the deployment suite: a scripted fake proxy and a client of it; the real proxy
comes from the harness."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from proxy.client import ProxyClient
from proxy.config import load_settings
from proxy.state import Phase, Readiness
from proxy.testing.harness import free_port, proxy_env

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO / "deployment_package"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class FakeProxy:
    """An aiohttp server on a thread of its own; tests set ``routes`` before requests."""

    port: int
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    seen: list[tuple[str, str, bytes, dict[str, str]]] = field(default_factory=list)
    connections: set[int] = field(default_factory=set)
    stop: Callable[[], None] = lambda: None
    """Stop listening (the port then refuses connections)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append((request.method, request.path, body, dict(request.headers)))
        if request.transport is not None:
            self.connections.add(id(request.transport))
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            return web.json_response({"error": {"message": "no route"}}, status=404)
        return await handler(request)


@pytest.fixture
def fake_proxy() -> Iterator[FakeProxy]:
    proxy = FakeProxy(port=free_port())
    loop = asyncio.new_event_loop()
    started = threading.Event()
    runner_box: list[web.AppRunner] = []

    async def serve() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", proxy.dispatch)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", proxy.port).start()
        runner_box.append(runner)
        started.set()

    def stop() -> None:
        if runner_box:
            asyncio.run_coroutine_threadsafe(runner_box.pop().cleanup(), loop).result(10)

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    assert started.wait(10)
    proxy.stop = stop
    yield proxy
    stop()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def sim_env(workdir: Path, **overrides: str) -> dict[str, str]:
    """The environment of a deployment whose proxy runs the simulator on free ports."""
    return proxy_env(workdir, SHUTDOWN_GRACE="2", LOG_FORMAT="console", **overrides)


ENV = {"OLLAMA_CHAT_MODELS": "smollm2:135m,qwen", "OLLAMA_EMBEDDING_MODELS": "all-minilm:l6-v2"}
CHAT = {"model": "smollm2:135m", "messages": [{"role": "user", "content": "Hi"}]}
KEY = "k" * 24


def make_client(port: int, **env: str) -> ProxyClient:
    """A client of the proxy on ``port``, with the key :data:`KEY`."""
    return ProxyClient(load_settings({**ENV, "PROXY_PORT": str(port), "PROXY_API_KEY": KEY, **env}))


@pytest.fixture
def client(fake_proxy: FakeProxy) -> Iterator[ProxyClient]:
    """A client of a proxy that serves (its ``/readyz`` says so; tests may change that)."""
    fake_proxy.routes["GET", "/readyz"] = readiness(Phase.READY, True)  # type: ignore[assignment]
    client = make_client(fake_proxy.port, READY_TIMEOUT="10")
    yield client
    client.close()


def readiness(
    phase: Phase,
    serving: bool,
    *,
    gave_up: bool = False,
    reason: str = "",
    models: dict[str, object] | None = None,
) -> object:
    """A ``/readyz`` handler that answers this readiness."""

    async def readyz(_request: web.Request) -> web.Response:
        details = {"models": models} if models is not None else {}
        document = Readiness(phase, serving, gave_up, reason or None, details).as_json()
        return web.json_response(document, status=200 if serving else 503)

    return readyz


def posted(proxy: FakeProxy) -> list[bytes]:
    """The bodies the fake proxy received in POST requests."""
    return [body for method, _, body, _ in proxy.seen if method == "POST"]
