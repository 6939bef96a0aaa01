"""Ollama's OpenAI-compatible API (``/v1``), translated to and from the native one.

Streams are ``text/event-stream`` with ``data: {json}\\n\\n`` events and a final ``data: [DONE]``.
Chat chunks carry ``role`` only in the first delta, then a finish chunk with an empty delta; with
``stream_options.include_usage`` one more chunk with ``choices: []`` and the real usage precedes
``[DONE]`` (completion chunks also carry a zeroed ``usage`` each, as Ollama's do). Errors are
``{"error": {"message", "type", "param": null, "code": null}}`` with the native status code:
handlers raise :class:`~proxy.testing.simulator.wire.ApiError`, the app answers it with
:func:`error_response`.
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

from .inference import Finished, Immediate, Run, embed, plan_chat, plan_generate
from .runtime import SIMULATOR
from .wire import ApiError, ChunkStream, StreamAborted, dumps, get_field, open_stream, read_body

__all__ = ["error_response", "routes"]

routes = web.RouteTableDef()
"""The ``/v1`` routes, added to the app by :func:`~proxy.testing.simulator.create_app`."""

_FINGERPRINT = "fp_ollama"
_DONE = b"data: [DONE]\n\n"


def _json(value: Any, status: int = 200) -> web.Response:
    """``json.NewEncoder(w).Encode``: ``application/json`` and a trailing newline."""
    body = (dumps(value) + "\n").encode()
    return web.Response(body=body, status=status, headers={"Content-Type": "application/json"})


def error_response(status: int, message: str) -> web.Response:
    """OpenAI's error body, with the native status code."""
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


def _delta(delta: dict[str, str], reason: str | None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "finish_reason": reason}


async def _read(request: web.Request, struct: str) -> tuple[dict[str, Any], bool, bool]:
    """The body, its ``stream`` flag and ``stream_options.include_usage``."""
    body = await read_body(request, f"openai.{struct}", missing="EOF")
    stream = get_field(body, "stream", bool, False, struct)
    options = get_field(body, "stream_options", dict, {}, struct)
    return body, stream, get_field(options, "include_usage", bool, False, "StreamOptions")


def _native_options(body: dict[str, Any], struct: str) -> dict[str, Any]:
    if body.get("max_tokens") is None:
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


class _Chat:
    """``chat.completion`` and its ``chat.completion.chunk`` events."""

    def __init__(self, head: dict[str, Any], include_usage: bool) -> None:
        self.head = {**head, "object": "chat.completion.chunk"}
        self.include_usage = include_usage
        self._first = True

    def whole(self, text: str, final: Finished) -> dict[str, Any]:
        """The non-streamed response."""
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": final.done_reason}
        return {
            **self.head,
            "object": "chat.completion",
            "choices": [choice],
            "usage": _usage(final),
        }

    def failure(self) -> bytes:
        """What Ollama's ChatWriter makes of an in-band error line: an empty delta, no model."""
        delta = {"role": "assistant", "content": ""} if self._first else {"content": ""}
        return _sse({**self.head, "model": "", "choices": [_delta(delta, None)]})

    def chunks(self, event: str | Finished) -> list[bytes]:
        """The events for one token or for the end."""
        out: list[bytes] = []
        if isinstance(event, str) or self._first:
            text = event if isinstance(event, str) else ""
            delta = {"role": "assistant", "content": text} if self._first else {"content": text}
            out.append(_sse({**self.head, "choices": [_delta(delta, None)]}))
            self._first = False
        if isinstance(event, Finished):
            out.append(_sse({**self.head, "choices": [_delta({}, event.done_reason)]}))
            if self.include_usage:
                out.append(_sse({**self.head, "choices": [], "usage": _usage(event)}))
            out.append(_DONE)
        return out


class _Completion:
    """``text_completion`` and its chunks (Go field order puts ``choices`` before ``model``)."""

    def __init__(self, head: dict[str, Any], include_usage: bool) -> None:
        self.head = {**head, "object": "text_completion"}
        self.include_usage = include_usage
        self._zero = _usage(None) if include_usage else None

    def whole(self, text: str, final: Finished) -> dict[str, Any]:
        """The non-streamed response."""
        choice = {"text": text, "index": 0, "finish_reason": final.done_reason}
        return {**self.head, "choices": [choice], "usage": _usage(final)}

    def failure(self) -> bytes:
        """What Ollama's middleware makes of an in-band error line: an empty text, no model."""
        return self._chunk([{"text": "", "index": 0, "finish_reason": None}], self._zero, "")

    def chunks(self, event: str | Finished) -> list[bytes]:
        """The events for one token or for the end."""
        text, reason = (event, None) if isinstance(event, str) else ("", event.done_reason)
        out = [self._chunk([{"text": text, "index": 0, "finish_reason": reason}], self._zero)]
        if isinstance(event, Finished):
            if self.include_usage:
                out.append(self._chunk([], _usage(event)))
            out.append(_DONE)
        return out

    def _chunk(
        self, choices: list[dict[str, Any]], usage: dict[str, int] | None, model: str | None = None
    ) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.head["id"],
            "object": "text_completion",
            "created": int(time.time()),
            "choices": choices,
            "model": self.head["model"] if model is None else model,
            "system_fingerprint": _FINGERPRINT,
        }
        if usage is not None:
            chunk["usage"] = usage
        return _sse(chunk)


async def _events(plan: Run | Immediate) -> AsyncIterator[str | Finished]:
    """A plan's events; a load-only plan is a lone final event with zero counts."""
    if isinstance(plan, Run):
        async for event in plan.events():
            yield event
    else:
        yield Finished(plan.done_reason)


async def _answer(
    request: web.Request, plan: Run | Immediate, api: _Chat | _Completion, stream: bool
) -> web.StreamResponse:
    """The whole response, or its events as a stream with the stream faults applied."""
    try:
        if not stream:
            parts: list[str] = []
            async for event in _events(plan):
                if isinstance(event, Finished):
                    return _json(api.whole("".join(parts), event))
                parts.append(event)
            raise AssertionError("a plan always ends with Finished")
        response = await open_stream(request, "text/event-stream")
        sim = request.app[SIMULATOR]
        crash = sim.crash if isinstance(plan, Run) and plan.crash else None
        chunks = ChunkStream(request, response, sim.faults, crash)
        try:
            async for event in _events(plan):
                if chunks.failing:
                    await chunks.send(api.failure())
                    break
                for chunk in api.chunks(event):
                    await chunks.send(chunk)
            await chunks.finish()
        except StreamAborted:
            pass
        return response
    finally:
        if isinstance(plan, Run):
            plan.release()


def _head(prefix: str, label: str) -> dict[str, Any]:
    """Leading fields of a completion (Ollama ids are ``rand.Intn(999)``, not unique)."""
    return {
        "id": f"{prefix}-{random.randrange(999)}",  # noqa: S311
        "object": "",
        "created": int(time.time()),
        "model": label,
        "system_fingerprint": _FINGERPRINT,
    }


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``chat.completion`` or a stream of ``chat.completion.chunk`` events."""
    struct = "ChatCompletionRequest"
    body, stream, include_usage = await _read(request, struct)
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
    return await _answer(request, plan, _Chat(_head("chatcmpl", plan.label), include_usage), stream)


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    """``text_completion`` or a stream of them."""
    struct = "CompletionRequest"
    body, stream, include_usage = await _read(request, struct)
    native = {
        "model": get_field(body, "model", str, "", struct),
        "prompt": get_field(body, "prompt", str, "", struct),
        "stream": stream,
        "options": _native_options(body, struct),
    }
    plan = await plan_generate(request.app[SIMULATOR], native)
    api = _Completion(_head("cmpl", plan.label), include_usage)
    return await _answer(request, plan, api, stream)


@routes.post("/v1/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    """An embedding list; ``encoding_format: base64`` gives little-endian float32 base64."""
    struct = "EmbedRequest"
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
