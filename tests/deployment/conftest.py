"""Fixtures for the deployment suite: a scripted fake proxy, env for the real one, reaping."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO / "deployment_package"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class FakeProxy:
    """An aiohttp server on a thread of its own; tests set ``routes`` before requests."""

    port: int
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    seen: list[tuple[str, str, bytes, dict[str, str]]] = field(default_factory=list)
    connections: set[int] = field(default_factory=set)

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

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    assert started.wait(10)
    yield proxy
    asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` (capped backoff) until it is true; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def simulator_bin() -> str:
    """The Ollama simulator's executable, installed next to this interpreter."""
    path = Path(sys.executable).with_name("ollama-sim")
    if not path.is_file():
        pytest.fail(f"the Ollama simulator is not installed at {path}")
    return str(path)


def sim_env(models_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment of a deployment whose proxy runs the simulator on free ports."""
    models_dir.mkdir(parents=True, exist_ok=True)
    (models_dir.parent / f"{models_dir.name}-sim-state").mkdir(exist_ok=True)
    return {
        "OLLAMA_BIN": simulator_bin(),
        "OLLAMA_MODELS": str(models_dir),
        "OLLAMA_CHAT_MODELS": "smollm2:135m",
        "OLLAMA_EMBEDDING_MODELS": "all-minilm:l6-v2",
        "PROXY_PORT": str(free_port()),
        "OLLAMA_INTERNAL_HOST": f"127.0.0.1:{free_port()}",
        "READY_TIMEOUT": "60",
        "SHUTDOWN_GRACE": "2",
        "LOG_FORMAT": "console",
        "SIM_STATE_DIR": str(models_dir.parent / f"{models_dir.name}-sim-state"),
        "SIM_PULL_DELAY": "0.001",
        "SIM_PULL_STEPS": "3",
        **overrides,
    }
