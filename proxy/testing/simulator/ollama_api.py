"""Ollama's native API: model listing and management, pull, and inference (``/api/*``).

Handlers raise :class:`~proxy.testing.simulator.wire.ApiError`; the app answers it with Ollama's
``{"error": "..."}`` body (see :func:`~proxy.testing.simulator.create_app`).

Inference (generate, chat, embed, embeddings) streams NDJSON unless ``"stream": false``.
``/api/pull`` follows Ollama's ``PullModel``: ``pulling manifest``; per layer ``pulling <12 hex>``
lines with ``digest``, ``total`` and a growing ``completed`` (absent while zero, as Go omits it);
``verifying sha256 digest``; ``writing manifest``; ``removing any unused layers``; ``success``.
Errors after the first line arrive in-band under HTTP 200, so an unknown model gives
``pulling manifest`` then ``{"error":"pull model manifest: file does not exist"}``. Nothing is
downloaded: the log says so (``simulated download``), while the progress lines keep the real
sizes a client expects.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from .compat import RUNNER_FAILED
from .config import PullFailureMode
from .inference import Finished, Immediate, Run, embed, embeddings_legacy, plan_chat, plan_generate
from .models import Layer, ModelKind, ModelName
from .runtime import SIMULATOR, Simulator, StoredModel
from .wire import (
    ApiError,
    ChunkStream,
    StreamAborted,
    drop_connection,
    dumps,
    format_local,
    get_field,
    json_response,
    log,
    open_stream,
    read_body,
    rfc3339_utc,
)

__all__ = ["routes"]

_CONTEXT_LENGTH = 4096
"""Ollama's default ``num_ctx``; a model with a shorter context runs with its own."""
_NOT_FOUND = "pull model manifest: file does not exist"
_RETRIES = "max retries exceeded: simulated download failure (SIM_PULL_FAILURE_MODE=inband)"
_HTTP500 = "pull model manifest: simulated registry failure (SIM_PULL_FAILURE_MODE=http500)"

routes = web.RouteTableDef()
"""The native routes, added to the app by :func:`~proxy.testing.simulator.create_app`."""

_Planner = Callable[[Simulator, dict[str, Any]], Awaitable[Run | Immediate]]
_Handle = Callable[[Simulator, dict[str, Any]], Awaitable[dict[str, Any]]]


async def _named(request: web.Request, struct: str) -> tuple[dict[str, Any], str]:
    """The body and its ``model`` (or legacy ``name``) field."""
    body = await read_body(request, f"api.{struct}")
    name = get_field(body, "model", str, "", struct) or get_field(body, "name", str, "", struct)
    return body, name


def _listed(model: StoredModel, **fields: Any) -> dict[str, Any]:
    """A model as ``/api/tags`` and ``/api/ps`` list it."""
    name = model.name.display
    common = {"size": model.size, "digest": model.digest, "details": model.spec.details()}
    return {"name": name, "model": name, **fields, **common}


@routes.get("/api/tags")  # Gin also registers HEAD here
async def tags(request: web.Request) -> web.Response:
    """Present models, most recently modified first."""
    models = request.app[SIMULATOR].store.all()
    return json_response(
        {"models": [_listed(m, modified_at=format_local(m.modified_at)) for m in models]}
    )


@routes.get("/api/ps", allow_head=False)
async def ps(request: web.Request) -> web.Response:
    """Loaded models with their expiry."""
    models = [
        {
            **_listed(entry.model),
            "expires_at": format_local(entry.expires_at),
            "size_vram": 0,
            "context_length": min(_CONTEXT_LENGTH, entry.model.spec.context_length),
        }
        for entry in request.app[SIMULATOR].scheduler.running()
    ]
    return json_response({"models": models})


def _line(label: str, chat: bool, content: str, tail: dict[str, Any]) -> str:
    """One ``GenerateResponse``/``ChatResponse`` JSON text, fields in Go order."""
    part = {"message": {"role": "assistant", "content": content}} if chat else {"response": content}
    return f'{{"model":{dumps(label)},"created_at":"{rfc3339_utc()}",{dumps({**part, **tail})[1:]}'


def _final(event: Finished) -> dict[str, Any]:
    tail: dict[str, Any] = {"done": True, "done_reason": event.done_reason}
    if event.context is not None:
        tail["context"] = event.context
    return {**tail, **event.metrics()}


def _raw_json(text: str) -> web.Response:
    return web.Response(text=text, content_type="application/json", charset="utf-8")


async def _inference(
    request: web.Request, struct: str, planner: _Planner, chat: bool
) -> web.StreamResponse:
    """Plan, then answer with one JSON object or an NDJSON stream."""
    plan = await planner(request.app[SIMULATOR], await read_body(request, f"api.{struct}"))
    if isinstance(plan, Immediate):
        tail = {"done": True, "done_reason": plan.done_reason}
        return _raw_json(_line(plan.label, chat, "", tail))
    try:
        if not plan.stream:
            parts: list[str] = []
            async for event in plan.events():
                if isinstance(event, str):
                    parts.append(event)
                else:
                    return _raw_json(_line(plan.label, chat, "".join(parts), _final(event)))
            raise AssertionError("a run always ends with Finished")
        if plan.sim.faults.stream_error_after == 0:
            # The runner failed before the first token: streamResponse answers with a status.
            return _waited({"error": RUNNER_FAILED}, 500)
        response = await open_stream(request, "application/x-ndjson")
        crash = plan.sim.crash if plan.crash else None
        stream = ChunkStream(request, response, plan.sim.faults, crash)
        try:
            async for event in plan.events():
                if stream.failing:
                    await stream.send(dumps({"error": RUNNER_FAILED}).encode() + b"\n")
                    break
                if isinstance(event, str):
                    line = _line(plan.label, chat, event, {"done": False})
                else:
                    line = _line(plan.label, chat, "", _final(event))
                await stream.send(line.encode() + b"\n")
            await stream.finish()
        except StreamAborted:
            pass
        return response
    finally:
        plan.release()


@routes.post("/api/generate")
async def generate(request: web.Request) -> web.StreamResponse:
    """Text completion; NDJSON stream unless ``"stream": false``."""
    return await _inference(request, "GenerateRequest", plan_generate, chat=False)


@routes.post("/api/chat")
async def chat(request: web.Request) -> web.StreamResponse:
    """Chat completion; NDJSON stream unless ``"stream": false``."""
    return await _inference(request, "ChatRequest", plan_chat, chat=True)


async def _embedding(request: web.Request, struct: str, handle: _Handle) -> web.Response:
    body = await read_body(request, f"api.{struct}")
    return json_response(await handle(request.app[SIMULATOR], body))


@routes.post("/api/embed")
async def embed_route(request: web.Request) -> web.Response:
    """Batch embeddings."""
    return await _embedding(request, "EmbedRequest", embed)


@routes.post("/api/embeddings")
async def embeddings_route(request: web.Request) -> web.Response:
    """Legacy single embedding."""
    return await _embedding(request, "EmbeddingRequest", embeddings_legacy)


def _modelfile(model: StoredModel, blobs: str) -> str:
    spec = model.spec
    lines = [
        '# Modelfile generated by "ollama show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {model.name.display}",
        "",
        f"FROM {blobs}/sha256-{model.layers[0].removeprefix('sha256:')}",
    ]
    if spec.template:
        lines.append(f'TEMPLATE """{spec.template}"""')
    lines.extend(f"PARAMETER {key} {value}" for key, value in spec.parameters)
    lines.append(f'LICENSE """{spec.license}"""')
    return "\n".join(lines) + "\n"


def _tensors(model: StoredModel) -> list[dict[str, Any]]:
    """A few of the weights' tensors (real Ollama lists them all: hundreds)."""
    spec = model.spec
    width, quant = spec.embedding_length, spec.quantization
    vocab = 30522 if spec.kind is ModelKind.EMBEDDING else 49152
    rows = [
        ("token_embd.weight", quant, [width, vocab]),
        ("blk.0.attn_norm.weight", "F32", [width]),
        ("blk.0.attn_q.weight", quant, [width, width]),
        ("blk.0.ffn_down.weight", quant, [4 * width, width]),
        ("output_norm.weight", "F32", [width]),
    ]
    return [{"name": name, "type": kind, "shape": shape} for name, kind, shape in rows]


@routes.post("/api/show")
async def show(request: web.Request) -> web.Response:
    """Model details; 404 ``model 'x:latest' not found`` when absent."""
    sim = request.app[SIMULATOR]
    _, raw = await _named(request, "ShowRequest")
    if not raw:
        raise ApiError(400, "model is required")
    name = ModelName.parse(raw)
    if name is None:
        raise ApiError(400, "invalid model name")
    model = sim.store.get(name)
    if model is None:
        raise ApiError(404, f"model '{raw}' not found")
    spec, arch = model.spec, model.spec.family
    info: dict[str, Any] = {
        "general.architecture": arch,
        "general.basename": model.name.model,
        "general.file_type": spec.file_type,
        "general.parameter_count": spec.parameter_count,
        "general.quantization_version": 2,
        f"{arch}.context_length": spec.context_length,
        f"{arch}.embedding_length": spec.embedding_length,
    }
    if spec.kind is ModelKind.EMBEDDING:
        info[f"{arch}.pooling_type"] = 1
    response: dict[str, Any] = {
        "license": spec.license,
        "modelfile": _modelfile(model, str(sim.config.models_dir / "blobs")),
        "parameters": "\n".join(f"{key:<30} {json.dumps(value)}" for key, value in spec.parameters),
        "template": spec.template,
        "details": spec.details(),
        "model_info": info,
        "tensors": _tensors(model),
        "capabilities": spec.capabilities,
        "modified_at": format_local(model.modified_at),
    }
    return json_response({key: value for key, value in response.items() if value != ""})


@routes.delete("/api/delete")
async def delete(request: web.Request) -> web.Response:
    """Remove a model: 200 with an empty body, or 404."""
    sim = request.app[SIMULATOR]
    _, raw = await _named(request, "DeleteRequest")
    name = ModelName.parse(raw)
    if name is None:
        raise ApiError(400, f"name {dumps(raw)} is invalid")
    model = sim.store.get(name)
    if model is None or not sim.store.delete(name):
        raise ApiError(404, f"model '{raw}' not found")
    sim.scheduler.unload(model)
    return web.Response()


@routes.post("/api/copy")
async def copy(request: web.Request) -> web.Response:
    """Duplicate a model under a new name: 200 with an empty body, or 404."""
    body = await read_body(request, "api.CopyRequest")
    source_raw = get_field(body, "source", str, "", "CopyRequest")
    dest_raw = get_field(body, "destination", str, "", "CopyRequest")
    source, dest = ModelName.parse(source_raw), ModelName.parse(dest_raw)
    if source is None:
        raise ApiError(400, f"source {dumps(source_raw)} is invalid")
    if dest is None:
        raise ApiError(400, f"destination {dumps(dest_raw)} is invalid")
    if request.app[SIMULATOR].store.copy(source, dest) is None:
        raise ApiError(404, f"model {dumps(source_raw)} not found")
    return web.Response()


class _PullFailed(Exception):
    """The pull fails; ``reason`` goes to ``pulls.log``, ``message`` to the client (if any)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _layer_line(layer: Layer, completed: int) -> dict[str, Any]:
    line = {"status": f"pulling {layer.digest[7:19]}", "digest": layer.digest, "total": layer.size}
    return {**line, "completed": completed} if completed else line


class _Pull:
    """One pull request's progress, as an async iterator of NDJSON objects."""

    def __init__(self, sim: Simulator, name: ModelName) -> None:
        self.sim = sim
        self.name = name
        self.failure = sim.counters.take_pull_failure()
        self.downloaded = False
        self._first = True

    async def _paced(self, line: dict[str, Any]) -> dict[str, Any]:
        if not self._first and self.sim.faults.pull_delay > 0:
            await asyncio.sleep(self.sim.faults.pull_delay)
        self._first = False
        return line

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        """Yield progress lines; raises :class:`_PullFailed` where the pull breaks off."""
        sim = self.sim
        yield await self._paced({"status": "pulling manifest"})
        spec = sim.registry.lookup(self.name)
        if self.failure is not None:
            missing = hashlib.sha256(f"ollama-sim missing {self.name.key}".encode()).hexdigest()
            layer = spec.layers()[0] if spec else Layer("", f"sha256:{missing}", 100_000_000, None)
            yield await self._paced(_layer_line(layer, 0))
            yield await self._paced(_layer_line(layer, layer.size // 3))
            raise _PullFailed(self.failure.value, _RETRIES)
        if spec is None:
            raise _PullFailed("not_found", _NOT_FOUND)
        existing = sim.store.get(self.name)
        present = set(existing.layers) if existing else set()
        steps = sim.faults.pull_steps
        for layer in spec.layers():
            if layer.digest in present:
                yield await self._paced(_layer_line(layer, layer.size))
                continue
            log(
                "INFO",
                "download.go:177",
                f"simulated download of {layer.digest[7:19]} "
                f"({layer.size} B reported, nothing transferred)",
                model=self.name.display,
            )
            for step in range(steps):
                done = layer.size if steps == 1 else layer.size * step // (steps - 1)
                yield await self._paced(_layer_line(layer, done))
        yield await self._paced({"status": "verifying sha256 digest"})
        yield await self._paced({"status": "writing manifest"})
        installed = sim.store.install(self.name, spec)
        self.downloaded = existing is None or existing.digest != installed.digest
        yield await self._paced({"status": "removing any unused layers"})
        yield await self._paced({"status": "success"})

    def record(self, reason: str | None) -> None:
        """Append the outcome to ``pulls.log``."""
        self.sim.counters.record_pull(self.name.display, reason, self.downloaded)


@routes.post("/api/pull")
async def pull(request: web.Request) -> web.StreamResponse:
    """Pull a model (``model`` or legacy ``name``; ``stream`` defaults to true)."""
    body, raw = await _named(request, "PullRequest")
    stream = get_field(body, "stream", bool, True, "PullRequest")
    name = ModelName.parse(raw)
    if name is None:
        raise ApiError(400, "invalid model name")
    job = _Pull(request.app[SIMULATOR], name)
    if job.failure is PullFailureMode.HTTP500:
        job.record(job.failure.value)
        raise ApiError(500, _HTTP500)
    if not stream:
        return await _wait(request, job)
    response = await open_stream(request, "application/x-ndjson")
    try:
        async for line in job.progress():
            await response.write(dumps(line).encode() + b"\n")
    except _PullFailed as exc:
        job.record(exc.reason)
        if exc.reason == PullFailureMode.CUT:
            drop_connection(request)
            return response
        await response.write(dumps({"error": exc.message}).encode() + b"\n")
    else:
        job.record(None)
    await response.write_eof()
    return response


def _waited(value: dict[str, Any], status: int = 200) -> web.Response:
    """``waitForStream`` sets ``application/json`` (no charset) before ``c.JSON``."""
    body = dumps(value).encode()
    return web.Response(body=body, status=status, headers={"Content-Type": "application/json"})


async def _wait(request: web.Request, job: _Pull) -> web.Response:
    """``stream: false``: the last progress line, or HTTP 500 with the error (``waitForStream``)."""
    last: dict[str, Any] = {}
    try:
        async for line in job.progress():
            last = line
    except _PullFailed as exc:
        job.record(exc.reason)
        if exc.reason == PullFailureMode.CUT:
            drop_connection(request)
        return _waited({"error": exc.message}, 500)
    job.record(None)
    return _waited(last)
