"""Ollama's native inference API: ``/``, version, ps, generate, chat and embeddings."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from .engine import Finished, Immediate, Run, embed, embeddings_legacy, plan_chat, plan_generate
from .runtime import SIMULATOR
from .streaming import ChunkStream, StreamAborted, open_stream
from .timeutil import format_local, rfc3339_utc
from .version import VERSION
from .wire import ApiError, dumps, error_response, json_response, read_body

__all__ = ["STREAM_ERROR", "routes"]

routes = web.RouteTableDef()

STREAM_ERROR = "an error was encountered while running the model: unexpected EOF"
_CONTEXT_LENGTH = 4096


class _Encoder(Protocol):
    def __call__(self, label: str, event: str | Finished, text: str = "") -> str: ...


@routes.get("/")
async def root(request: web.Request) -> web.Response:
    """Liveness: ``Ollama is running``."""
    return web.Response(text="Ollama is running", content_type="text/plain", charset="utf-8")


@routes.get("/api/version")
async def version(request: web.Request) -> web.Response:
    """``{"version": "..."}``."""
    return json_response({"version": VERSION})


@routes.get("/api/ps", allow_head=False)
async def ps(request: web.Request) -> web.Response:
    """Loaded models with their expiry."""
    sim = request.app[SIMULATOR]
    models = [
        {
            "name": entry.model.name.display,
            "model": entry.model.name.display,
            "size": entry.model.size,
            "digest": entry.model.digest,
            "details": entry.model.spec.details(),
            "expires_at": format_local(entry.expires_at),
            "size_vram": 0,
            "context_length": _CONTEXT_LENGTH,
        }
        for entry in sim.scheduler.running()
    ]
    return json_response({"models": models})


def _generate_line(label: str, event: str | Finished, text: str = "") -> str:
    """One ``GenerateResponse``; ``text`` is the final chunk's response (non-streamed only)."""
    if isinstance(event, str):
        response = dumps(event)
        return (
            f'{{"model":{label},"created_at":"{rfc3339_utc()}","response":{response},"done":false}}'
        )
    final: dict[str, Any] = {"response": text, "done": True, "done_reason": event.done_reason}
    if event.context is not None:
        final["context"] = event.context
    final.update(event.metrics())
    return f'{{"model":{label},"created_at":"{rfc3339_utc()}",{dumps(final)[1:]}'


def _chat_line(label: str, event: str | Finished, text: str = "") -> str:
    """One ``ChatResponse``; ``text`` is the final chunk's content (non-streamed only)."""
    if isinstance(event, str):
        message = f'{{"role":"assistant","content":{dumps(event)}}}'
        return (
            f'{{"model":{label},"created_at":"{rfc3339_utc()}","message":{message},"done":false}}'
        )
    final = {
        "message": {"role": "assistant", "content": text},
        "done": True,
        "done_reason": event.done_reason,
        **event.metrics(),
    }
    return f'{{"model":{label},"created_at":"{rfc3339_utc()}",{dumps(final)[1:]}'


async def _respond(request: web.Request, run: Run, encode: _Encoder) -> web.StreamResponse:
    label = dumps(run.label)
    try:
        if not run.stream:
            parts: list[str] = []
            async for event in run.events():
                if isinstance(event, str):
                    parts.append(event)
                else:
                    return _raw_json(encode(label, event, "".join(parts)))
            raise AssertionError("a run always ends with Finished")
        response = await open_stream(request, "application/x-ndjson")
        stream = ChunkStream(request, response, run.sim, run.crash)
        try:
            async for event in run.events():
                if stream.failing:
                    await stream.send(dumps({"error": STREAM_ERROR}).encode() + b"\n")
                    break
                await stream.send(encode(label, event).encode() + b"\n")
            await stream.finish()
        except StreamAborted:
            pass
        return response
    finally:
        run.release()


def _raw_json(text: str) -> web.Response:
    return web.Response(text=text, content_type="application/json", charset="utf-8")


def _immediate(plan: Immediate, chat: bool) -> web.Response:
    body: dict[str, Any] = {"model": plan.label, "created_at": rfc3339_utc()}
    if chat:
        body["message"] = {"role": "assistant", "content": ""}
    else:
        body["response"] = ""
    body.update(done=True, done_reason=plan.done_reason)
    return json_response(body)


@routes.post("/api/generate")
async def generate(request: web.Request) -> web.StreamResponse:
    """Text completion; NDJSON stream unless ``"stream": false``."""
    try:
        plan = await plan_generate(
            request.app[SIMULATOR], await read_body(request, "api.GenerateRequest")
        )
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    if isinstance(plan, Immediate):
        return _immediate(plan, chat=False)
    return await _respond(request, plan, _generate_line)


@routes.post("/api/chat")
async def chat(request: web.Request) -> web.StreamResponse:
    """Chat completion; NDJSON stream unless ``"stream": false``."""
    try:
        plan = await plan_chat(request.app[SIMULATOR], await read_body(request, "api.ChatRequest"))
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    if isinstance(plan, Immediate):
        return _immediate(plan, chat=True)
    return await _respond(request, plan, _chat_line)


@routes.post("/api/embed")
async def embed_route(request: web.Request) -> web.Response:
    """Batch embeddings."""
    try:
        return json_response(
            await embed(request.app[SIMULATOR], await read_body(request, "api.EmbedRequest"))
        )
    except ApiError as exc:
        return error_response(exc.status, exc.message)


@routes.post("/api/embeddings")
async def embeddings_route(request: web.Request) -> web.Response:
    """Legacy single embedding."""
    sim = request.app[SIMULATOR]
    try:
        return json_response(
            await embeddings_legacy(sim, await read_body(request, "api.EmbeddingRequest"))
        )
    except ApiError as exc:
        return error_response(exc.status, exc.message)
