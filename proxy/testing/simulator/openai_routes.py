"""Ollama's OpenAI-compatible API (``/v1``), translated to and from the native one.

Streams are ``text/event-stream`` with ``data: {json}\\n\\n`` events and a final ``data: [DONE]``.
Chat chunks carry ``role`` only in the first delta, then a finish chunk with an empty delta; with
``stream_options.include_usage`` one more chunk with ``choices: []`` and the real usage precedes
``[DONE]`` (completion chunks also carry a zeroed ``usage`` each, as Ollama's do). Errors are
``{"error": {"message", "type", "param": null, "code": null}}`` with the native status code.
"""

from __future__ import annotations

import base64
import random
import sys
import time
from array import array
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from .engine import Finished, Immediate, Run, embed, plan_chat, plan_generate
from .names import ModelName
from .runtime import SIMULATOR
from .streaming import ChunkStream, StreamAborted, open_stream
from .wire import ApiError, dumps, get_field, read_body

__all__ = ["routes"]

routes = web.RouteTableDef()

_FINGERPRINT = "fp_ollama"


def _json(value: Any, status: int = 200) -> web.Response:
    """``json.NewEncoder(w).Encode``: ``application/json`` and a trailing newline."""
    body = (dumps(value) + "\n").encode()
    return web.Response(body=body, status=status, headers={"Content-Type": "application/json"})


def _error(status: int, message: str) -> web.Response:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return _json({"error": {"message": message, "type": kind, "param": None, "code": None}}, status)


def _usage(final: Finished | None) -> dict[str, int]:
    prompt = final.prompt_eval_count if final else 0
    completion = final.eval_count if final else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _sse(value: Any) -> bytes:
    return b"data: " + dumps(value).encode() + b"\n\n"


def _stream_options(body: dict[str, Any], struct: str) -> bool:
    options = get_field(body, "stream_options", dict, {}, struct)
    return get_field(options, "include_usage", bool, False, "StreamOptions")


def _native_options(body: dict[str, Any], struct: str) -> dict[str, Any]:
    limit = body.get("max_tokens")
    if limit is None:
        return {}
    return {"num_predict": get_field(body, "max_tokens", int, 0, struct)}


def _chat_messages(raw: list[Any]) -> list[dict[str, str]]:
    """``openai.FromChatRequest``: string content, or one message per text part."""
    messages: list[dict[str, str]] = []
    for item in raw:
        if not isinstance(item, dict):
            raise ApiError(
                400, "json: cannot unmarshal into Go struct field ChatCompletionRequest.messages"
            )
        role = get_field(item, "role", str, "", "ChatCompletionRequest.messages")
        content = item.get("content")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or part.get("type") not in {"text", "image_url"}:
                    raise ApiError(400, "invalid message format")
                if part["type"] == "text":
                    if not isinstance(part.get("text"), str):
                        raise ApiError(400, "invalid message format")
                    messages.append({"role": role, "content": part["text"]})
        elif content is None and item.get("tool_calls"):
            messages.append({"role": role, "content": ""})
        else:
            kind = (
                "<nil>"
                if content is None
                else {bool: "bool", dict: "map[string]interface {}"}.get(type(content), "float64")
            )
            raise ApiError(400, f"invalid message content type: {kind}")
    return messages


async def _events(plan: Run | Immediate) -> AsyncIterator[str | Finished]:
    """A plan's events; a load-only plan is a lone final event with zero counts."""
    if isinstance(plan, Run):
        async for event in plan.events():
            yield event
    else:
        yield Finished(plan.done_reason, 0, 0, 0, 0, 0, 0, None)


async def _collect(plan: Run | Immediate) -> tuple[str, Finished]:
    parts: list[str] = []
    async for event in _events(plan):
        if isinstance(event, Finished):
            return "".join(parts), event
        parts.append(event)
    raise AssertionError("a plan always ends with Finished")


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``chat.completion`` or a stream of ``chat.completion.chunk`` events."""
    struct = "ChatCompletionRequest"
    try:
        body = await read_body(request, "openai.ChatCompletionRequest", missing="EOF")
        stream = get_field(body, "stream", bool, False, struct)
        include_usage = _stream_options(body, struct)
        raw_messages = get_field(body, "messages", list, [], struct)
        if not raw_messages:
            raise ApiError(400, "[] is too short - 'messages'")
        native = {
            "model": get_field(body, "model", str, "", struct),
            "messages": _chat_messages(raw_messages),
            "stream": stream,
            "options": _native_options(body, struct),
        }
        plan = await plan_chat(request.app[SIMULATOR], native)
    except ApiError as exc:
        return _error(exc.status, exc.message)
    head = _head(f"chatcmpl-{random.randrange(999)}", "chat.completion.chunk", plan.label)  # noqa: S311
    try:
        if stream:
            return await _chat_stream(request, plan, head, include_usage)
        text, final = await _collect(plan)
        message = {"role": "assistant", "content": text}
        return _json(
            {
                **head,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": final.done_reason}],
                "usage": _usage(final),
            }
        )
    finally:
        if isinstance(plan, Run):
            plan.release()


def _head(completion_id: str, kind: str, label: str) -> dict[str, Any]:
    """Leading fields of a chat completion (Ollama ids are ``rand.Intn(999)``, not unique)."""
    return {
        "id": completion_id,
        "object": kind,
        "created": int(time.time()),
        "model": label,
        "system_fingerprint": _FINGERPRINT,
    }


async def _chat_stream(
    request: web.Request, plan: Run | Immediate, head: dict[str, Any], include_usage: bool
) -> web.StreamResponse:
    response = await open_stream(request, "text/event-stream")
    crash = isinstance(plan, Run) and plan.crash
    stream = ChunkStream(request, response, request.app[SIMULATOR], crash)
    first = True
    try:
        async for event in _events(plan):
            if stream.failing:
                # Ollama's ChatWriter decodes the in-band error line as an empty response.
                delta = {"role": "assistant", "content": ""} if first else {"content": ""}
                await stream.send(_sse({**head, "model": "", "choices": [_delta(delta, None)]}))
                break
            if isinstance(event, str) or first:
                text = event if isinstance(event, str) else ""
                delta = {"role": "assistant", "content": text} if first else {"content": text}
                await stream.send(_sse({**head, "choices": [_delta(delta, None)]}))
                first = False
            if isinstance(event, Finished):
                await stream.send(_sse({**head, "choices": [_delta({}, event.done_reason)]}))
                if include_usage:
                    await stream.send(_sse({**head, "choices": [], "usage": _usage(event)}))
                await stream.send(b"data: [DONE]\n\n")
        await stream.finish()
    except StreamAborted:
        pass
    return response


def _delta(delta: dict[str, str], reason: str | None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "finish_reason": reason}


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    """``text_completion`` or a stream of them."""
    struct = "CompletionRequest"
    try:
        body = await read_body(request, "openai.CompletionRequest", missing="EOF")
        stream = get_field(body, "stream", bool, False, struct)
        include_usage = _stream_options(body, struct)
        native = {
            "model": get_field(body, "model", str, "", struct),
            "prompt": get_field(body, "prompt", str, "", struct),
            "stream": stream,
            "options": _native_options(body, struct),
        }
        plan = await plan_generate(request.app[SIMULATOR], native)
    except ApiError as exc:
        return _error(exc.status, exc.message)
    head = _head(f"cmpl-{random.randrange(999)}", "text_completion", plan.label)  # noqa: S311
    try:
        if stream:
            return await _completion_stream(request, plan, head, include_usage)
        text, final = await _collect(plan)
        choice = {"text": text, "index": 0, "finish_reason": final.done_reason}
        return _json({**head, "choices": [choice], "usage": _usage(final)})
    finally:
        if isinstance(plan, Run):
            plan.release()


def _completion_chunk(
    head: dict[str, Any], choices: list[dict[str, Any]], usage: dict[str, int] | None
) -> bytes:
    """A ``CompletionChunk``: Go field order puts ``choices`` before ``model``."""
    chunk: dict[str, Any] = {
        "id": head["id"],
        "object": "text_completion",
        "created": int(time.time()),
        "choices": choices,
        "model": head["model"],
        "system_fingerprint": _FINGERPRINT,
    }
    if usage is not None:
        chunk["usage"] = usage
    return _sse(chunk)


async def _completion_stream(
    request: web.Request, plan: Run | Immediate, head: dict[str, Any], include_usage: bool
) -> web.StreamResponse:
    response = await open_stream(request, "text/event-stream")
    crash = isinstance(plan, Run) and plan.crash
    stream = ChunkStream(request, response, request.app[SIMULATOR], crash)
    zero = _usage(None) if include_usage else None
    try:
        async for event in _events(plan):
            if stream.failing:
                choice = {"text": "", "index": 0, "finish_reason": None}
                await stream.send(_completion_chunk({**head, "model": ""}, [choice], zero))
                break
            text, reason = (event, None) if isinstance(event, str) else ("", event.done_reason)
            choice = {"text": text, "index": 0, "finish_reason": reason}
            await stream.send(_completion_chunk(head, [choice], zero))
            if isinstance(event, Finished):
                if include_usage:
                    await stream.send(_completion_chunk(head, [], _usage(event)))
                await stream.send(b"data: [DONE]\n\n")
        await stream.finish()
    except StreamAborted:
        pass
    return response


@routes.post("/v1/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    """An embedding list; ``encoding_format: base64`` gives little-endian float32 base64."""
    struct = "EmbedRequest"
    try:
        body = await read_body(request, "openai.EmbedRequest", missing="EOF")
        label = get_field(body, "model", str, "", struct)
        encoding = get_field(body, "encoding_format", str, "", struct)
        if encoding and encoding.lower() not in {"float", "base64"}:
            raise ApiError(
                400,
                f"Invalid value for 'encoding_format' = {encoding}. "
                "Supported values: ['float', 'base64'].",
            )
        raw = body.get("input")
        if raw == "":
            raw = [""]
        if raw is None or raw == []:
            raise ApiError(400, "invalid input")
        native = {
            "model": label,
            "input": raw,
            "dimensions": get_field(body, "dimensions", int, 0, struct),
        }
        result = await embed(request.app[SIMULATOR], native)
    except ApiError as exc:
        return _error(exc.status, exc.message)
    as_base64 = encoding.lower() == "base64"
    data = [
        {
            "object": "embedding",
            "embedding": _base64(vector) if as_base64 else vector,
            "index": index,
        }
        for index, vector in enumerate(result["embeddings"])
    ]
    tokens = result.get("prompt_eval_count", 0)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return _json({"object": "list", "data": data, "model": label, "usage": usage})


def _base64(vector: list[float]) -> str:
    packed = array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


@routes.get("/v1/models", allow_head=False)
async def list_models(request: web.Request) -> web.Response:
    """Present models; ``data`` is ``null`` when there are none, as Ollama encodes a nil slice."""
    models = request.app[SIMULATOR].store.all()
    data = [
        {
            "id": m.name.display,
            "object": "model",
            "created": int(m.modified_at),
            "owned_by": m.name.namespace,
        }
        for m in models
    ]
    return _json({"object": "list", "data": data or None})


@routes.get("/v1/models/{model}", allow_head=False)
async def retrieve_model(request: web.Request) -> web.Response:
    """One model; 404 ``not_found_error`` when absent."""
    raw = request.match_info["model"]
    name = ModelName.parse(raw)
    if name is None:
        return _error(400, "invalid model name")
    model = request.app[SIMULATOR].store.get(name)
    if model is None:
        return _error(404, f"model '{name.display}' not found")
    return _json(
        {
            "id": raw,
            "object": "model",
            "created": int(model.modified_at),
            "owned_by": name.namespace,
        }
    )
