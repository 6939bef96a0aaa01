"""Pull protocol details against a scripted Ollama: in-band errors, cut streams, retries."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import tenacity
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from proxy.catalog import Catalog
from proxy.preparer import ModelPreparer, list_present
from proxy.pulls import PermanentPullError, TransientPullError, pull_model
from proxy.state import InstanceState, ModelStatus, Phase
from tests.clients import CLIENT_TIMEOUT

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MANIFEST = {"status": "pulling manifest"}


class FakeOllama:
    """Scripted pull answers, one per call, in order; records every request."""

    def __init__(self) -> None:
        self.pull_scripts: dict[str, list[Handler]] = {}
        self.present: list[str] = []
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.capabilities: dict[str, list[str]] = {}
        """What /api/show says a model can do (default: completion, or embedding for emb*)."""

    async def tags(self, _request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": n, "model": n} for n in self.present]})

    async def pull(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(("pull", body))
        script = self.pull_scripts[body["model"]]
        handler = script.pop(0) if len(script) > 1 else script[0]
        return await handler(request)

    async def show(self, request: web.Request) -> web.Response:
        model = (await request.json())["model"]
        default = ["embedding"] if model.startswith("emb") else ["completion"]
        return web.json_response({"capabilities": self.capabilities.get(model, default)})

    async def load(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.path, body))
        if body["model"] == "broken:latest":
            return web.json_response({"error": "model requires more system memory"}, status=500)
        return web.json_response({"model": body["model"], "done": True})

    def pulls_of(self, tag: str) -> int:
        return sum(1 for kind, body in self.requests if kind == "pull" and body["model"] == tag)


def ndjson(*lines: dict[str, Any], cut: bool = False) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for line in lines:
            await response.write(json.dumps(line).encode() + b"\n")
        if cut:
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write_eof()
        return response

    return handler


def http_error(status: int, message: str) -> Handler:
    async def handler(_request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": message}, status=status)

    return handler


def layer(completed: int, total: int = 1000, digest: str = "sha256:aa") -> dict[str, Any]:
    return {"status": f"pulling {digest[7:]}", "digest": digest, "total": total,
            "completed": completed}  # fmt: skip


SUCCESS = ndjson(MANIFEST, layer(500), layer(1000), {"status": "success"})


class ProgressSpy(InstanceState):
    """Records every pull progress written to the state."""

    def __init__(self, catalog: Catalog) -> None:
        super().__init__(catalog)
        self.progress: list[float] = []

    def set_model(
        self,
        tag: str,
        status: ModelStatus,
        reason: str | None = None,
        progress: float | None = None,
        *,
        misconfigured: bool = False,
    ) -> None:
        if status is ModelStatus.PULLING and progress is not None:
            self.progress.append(progress)
        super().set_model(tag, status, reason, progress, misconfigured=misconfigured)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeOllama, str, aiohttp.ClientSession]]:
    ollama = FakeOllama()
    app = web.Application()
    app.router.add_get("/api/tags", ollama.tags)
    app.router.add_post("/api/pull", ollama.pull)
    app.router.add_post("/api/generate", ollama.load)
    app.router.add_post("/api/embed", ollama.load)
    app.router.add_post("/api/show", ollama.show)
    async with TestServer(app) as server, aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        yield ollama, str(server.make_url("")).rstrip("/"), session


async def test_success_needs_the_success_line(fake: Any) -> None:
    ollama, url, session = fake
    ollama.pull_scripts["a:latest"] = [SUCCESS]
    seen: list[dict[str, Any]] = []
    await pull_model(session, url, "a:latest", seen.append)
    assert seen[0] == MANIFEST
    ollama.pull_scripts["b:latest"] = [ndjson(MANIFEST, layer(1000))]
    with pytest.raises(TransientPullError, match="ended without"):
        await pull_model(session, url, "b:latest")


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        (ndjson(MANIFEST, {"error": "pull model manifest: file does not exist"}),
         PermanentPullError),
        (ndjson(MANIFEST, {"error": "max retries exceeded: EOF"}), TransientPullError),
        (ndjson(MANIFEST, layer(10), cut=True), TransientPullError),
        (http_error(500, "boom"), TransientPullError),
        (http_error(429, "slow down"), TransientPullError),
        (http_error(400, "invalid model name"), PermanentPullError),
        (http_error(404, "model 'x' not found"), PermanentPullError),
    ],
    ids=["inband-missing", "inband-other", "cut", "http500", "http429", "http400", "http404"],
)  # fmt: skip
async def test_failures_are_classified(fake: Any, handler: Handler, error: type) -> None:
    ollama, url, session = fake
    ollama.pull_scripts["m:latest"] = [handler]
    with pytest.raises(error):
        await pull_model(session, url, "m:latest")


async def test_list_present_normalises_names(fake: Any) -> None:
    ollama, url, session = fake
    ollama.present = ["smollm2:latest", "registry.ollama.ai/library/all-minilm:l6-v2"]
    assert await list_present(session, url) == {"smollm2:latest", "all-minilm:l6-v2"}


def preparer(
    session: aiohttp.ClientSession, url: str, state: InstanceState, catalog: Catalog, **kw: Any
) -> ModelPreparer:
    options: dict[str, Any] = {
        "concurrency": 2,
        "attempts": 3,
        "warm": True,
        "wait": tenacity.wait_none(),
    }
    options.update(kw)
    return ModelPreparer(session, url, state, catalog, **options)


async def test_one_pass_retries_transients_fails_permanents_and_keeps_going(fake: Any) -> None:
    ollama, url, session = fake
    catalog = Catalog.parse("flaky,missing,present,broken", "emb")
    ollama.present = ["present:latest"]
    ollama.pull_scripts = {
        "flaky:latest": [http_error(500, "boom"), ndjson(MANIFEST, layer(5), cut=True), SUCCESS],
        "missing:latest": [ndjson(MANIFEST, {"error": "pull model manifest: file does not exist"})],
        "broken:latest": [SUCCESS],
        "emb:latest": [SUCCESS],
    }
    state = InstanceState(catalog)
    state.set_ollama(state.ollama_status.UP)
    with capture_logs() as logs:
        await preparer(session, url, state, catalog).run()
    models = state.models
    assert models["flaky:latest"].status is ModelStatus.READY
    assert ollama.pulls_of("flaky:latest") == 3
    assert models["missing:latest"].status is ModelStatus.FAILED
    assert (
        models["missing:latest"].reason == "pull failed: pull model manifest: file does not exist"
    )
    assert ollama.pulls_of("missing:latest") == 1
    assert ollama.pulls_of("present:latest") == 0
    assert models["present:latest"].status is ModelStatus.READY
    assert models["broken:latest"].status is ModelStatus.FAILED
    assert "more system memory" in (models["broken:latest"].reason or "")
    assert models["emb:latest"].status is ModelStatus.READY
    assert ("/api/embed", {"model": "emb:latest", "input": "warm-up"}) in ollama.requests
    assert ("/api/generate", {"model": "present:latest", "stream": False}) in ollama.requests
    assert state.phase is Phase.DEGRADED
    retries = [e for e in logs if e["event"] == "pull failed; retrying"]
    assert [(e["model"], e["attempt"]) for e in retries] == [
        ("flaky:latest", 1),
        ("flaky:latest", 2),
    ]
    assert any(e["event"] == "model loaded" and e["model"] == "emb:latest" for e in logs)


async def test_giving_up_names_the_attempts(fake: Any) -> None:
    ollama, url, session = fake
    catalog = Catalog.parse("down", "")
    ollama.pull_scripts = {"down:latest": [http_error(503, "registry unavailable")]}
    state = InstanceState(catalog)
    await preparer(session, url, state, catalog, attempts=2).run()
    assert ollama.pulls_of("down:latest") == 2
    assert state.models["down:latest"].reason == (
        "pull failed: registry unavailable (gave up after 2 attempts)"
    )


async def test_no_warm_up_leaves_models_present(fake: Any) -> None:
    ollama, url, session = fake
    catalog = Catalog.parse("a", "")
    ollama.pull_scripts = {"a:latest": [SUCCESS]}
    state = InstanceState(catalog, preload=False)
    await preparer(session, url, state, catalog, warm=False).run()
    assert state.models["a:latest"].status is ModelStatus.PRESENT
    assert not [r for r in ollama.requests if r[0] not in ("pull", "/api/show")]


async def test_a_model_of_the_wrong_kind_keeps_the_instance_from_serving(fake: Any) -> None:
    ollama, url, session = fake
    catalog = Catalog.parse("chatty", "notanembedder")
    ollama.present = ["chatty:latest", "notanembedder:latest"]
    ollama.capabilities = {"notanembedder:latest": ["completion", "tools"]}
    state = InstanceState(catalog)
    state.set_ollama(state.ollama_status.UP)
    await preparer(session, url, state, catalog).run()
    assert state.models["chatty:latest"].status is ModelStatus.READY
    wrong = state.models["notanembedder:latest"]
    assert wrong.status is ModelStatus.FAILED
    assert wrong.reason == (
        "notanembedder is listed in OLLAMA_EMBEDDING_MODELS, but Ollama says it cannot do "
        "embedding (it can do: completion, tools); list it under the other kind"
    )
    readiness = state.readiness()
    assert (readiness.serving, readiness.gave_up) == (False, True)
    assert "notanembedder is listed in OLLAMA_EMBEDDING_MODELS" in (readiness.reason or "")


async def test_progress_is_logged_at_a_sane_rate_and_reaches_the_state(fake: Any) -> None:
    ollama, url, session = fake
    catalog = Catalog.parse("big", "")
    steps = [layer(i * 10, 1000) for i in range(101)]
    ollama.pull_scripts = {"big:latest": [ndjson(MANIFEST, *steps, {"status": "success"})]}
    state = ProgressSpy(catalog)
    progress = state.progress
    with capture_logs() as logs:
        await preparer(session, url, state, catalog, warm=False).run()
    lines = [e for e in logs if e["event"] == "pull progress"]
    assert 5 <= len(lines) <= 11  # one per 10 %, not one per progress line
    assert lines[-1]["percent"] == 100.0
    assert {"completed_bytes", "total_bytes", "bytes_per_second"} <= lines[-1].keys()
    assert progress == sorted(progress)
    assert 10 <= len(progress) <= 101
