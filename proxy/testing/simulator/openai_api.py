"""Ollama's OpenAI-compatible API (``/v1``): chat completions, completions, embeddings and the
model listings, translated to and from the native API as Ollama's middleware does.

Streams are ``text/event-stream`` with ``data: {json}\\n\\n`` events and a final ``data: [DONE]``.
Every chat chunk's delta carries ``role`` and ``content``; the native final chunk becomes the
chunk with the ``finish_reason`` (and whatever text it carries, usually none); with
``stream_options.include_usage`` a copy of it with ``choices: []`` and the usage precedes
``[DONE]``. Completion chunks carry a zeroed ``usage`` each when usage is asked for.

Errors are ``{"error": {"message", "type", "param": null, "code": null}}``, typed by status
(400 ``invalid_request_error``, 404 ``not_found_error``, else ``api_error``): the middleware's own
(bad JSON, no messages) as ``application/json; charset=utf-8``; the native handler's (unknown
model, capabilities) through the writer, as ``application/json`` with a trailing newline.
"""

from __future__ import annotations

import base64
import random
import sys
import time
from array import array
from typing import Any

from aiohttp import web

from .compat import answer
from .inference import Finished, embed, plan_chat, plan_generate
from .models import ModelName
from .runtime import SIMULATOR, StoredModel
from .wire import (
    ApiError,
    encoded_response,
    get_field,
    json_response,
    read_body,
    sse_event,
)

__all__ = ["error_response", "routes"]

routes = web.RouteTableDef()
"""The OpenAI ``/v1`` routes, added to the app by :func:`~proxy.testing.simulator.create_app`."""

_FINGERPRINT = "fp_ollama"
_DONE = b"data: [DONE]\n\n"
_EFFORTS = ("high", "medium", "low", "max", "none")


def error_body(status: int, message: str) -> dict[str, Any]:
    """``openai.NewError``."""
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def error_response(exc: ApiError) -> web.Response:
    """OpenAI's error body for ``exc``, as its stage writes it (see :class:`ApiError`)."""
    body = error_body(exc.status, exc.message)
    return json_response(body, exc.status) if exc.early else encoded_response(body, exc.status)


def _usage(final: Finished | None) -> dict[str, int]:
    prompt = final.prompt_eval_count if final else 0
    completion = final.eval_count if final else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _read(request: web.Request, struct: str) -> tuple[dict[str, Any], bool, bool]:
    """The body, its ``stream`` flag and ``stream_options.include_usage``."""
    body = await read_body(request, f"openai.{struct}", missing="EOF", early=True)
    stream = get_field(body, "stream", bool, False, struct, early=True)
    options = get_field(
        body, "stream_options", dict, {}, struct, go_type="openai.StreamOptions", early=True
    )
    usage = get_field(options, "include_usage", bool, False, f"{struct}.stream_options", early=True)
    return body, stream, usage


def _native_options(body: dict[str, Any], struct: str) -> dict[str, Any]:
    if body.get("max_tokens") is None:
        return {}
    return {"num_predict": get_field(body, "max_tokens", int, 0, struct, early=True)}


def _content_type_name(content: Any) -> str:
    """Go's ``%T`` of a decoded JSON value."""
    if content is None:
        return "<nil>"
    if isinstance(content, bool):
        return "bool"
    if isinstance(content, dict):
        return "map[string]interface {}"
    return "float64"


def _chat_messages(raw: list[Any]) -> list[dict[str, str]]:
    """``openai.FromChatRequest``: string content, or one message per text part.

    Raises:
        ApiError: (early) a message Ollama's middleware rejects.
    """
    struct = "ChatCompletionRequest.messages"
    messages: list[dict[str, str]] = []
    for item in raw:
        if not isinstance(item, dict):
            raise ApiError(
                400,
                "json: cannot unmarshal into Go struct field ChatCompletionRequest.messages",
                early=True,
            )
        role = get_field(item, "role", str, "", struct, early=True)
        content = item.get("content")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or part.get("type") not in {"text", "image_url"}:
                    raise ApiError(400, "invalid message format", early=True)
                if part["type"] == "text":
                    if not isinstance(part.get("text"), str):
                        raise ApiError(400, "invalid message format", early=True)
                    messages.append({"role": role, "content": part["text"]})
        elif item.get("tool_calls") is not None:
            messages.append({"role": role, "content": ""})
        else:
            raise ApiError(
                400, f"invalid message content type: {_content_type_name(content)}", early=True
            )
    return messages


def _think(body: dict[str, Any], struct: str) -> bool | str | None:
    """``reasoning.effort`` or ``reasoning_effort`` as a native ``think`` value.

    Raises:
        ApiError: (early) an effort Ollama does not know.
    """
    reasoning = get_field(
        body, "reasoning", dict, {}, struct, go_type="openai.Reasoning", early=True
    )
    effort = get_field(reasoning, "effort", str, "", f"{struct}.reasoning", early=True)
    if "reasoning" not in body or body["reasoning"] is None:
        effort = get_field(body, "reasoning_effort", str, "", struct, early=True)
    if not effort:
        return None
    if effort not in _EFFORTS:
        raise ApiError(
            400,
            f"invalid reasoning value: '{effort}' "
            '(must be "high", "medium", "low", "max", or "none")',
            early=True,
        )
    return False if effort == "none" else effort


def _head(prefix: str, label: str) -> dict[str, Any]:
    """Leading fields of a completion (Ollama ids are ``rand.Intn(999)``, not unique)."""
    return {
        "id": f"{prefix}-{random.randrange(999)}",  # noqa: S311
        "object": "",
        "created": int(time.time()),
        "model": label,
        "system_fingerprint": _FINGERPRINT,
    }


class _ChatWriter:
    """``ChatWriter``: ``chat.completion`` and its ``chat.completion.chunk`` events."""

    def __init__(self, label: str, include_usage: bool) -> None:
        self.head = {**_head("chatcmpl", label), "object": "chat.completion.chunk"}
        self.include_usage = include_usage

    def whole(self, text: str, final: Finished) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": final.done_reason or None}
        return {
            **self.head,
            "object": "chat.completion",
            "choices": [choice],
            "usage": _usage(final),
        }

    def _chunk(self, text: str, reason: str | None, model: str | None = None) -> dict[str, Any]:
        delta = {"role": "assistant", "content": text}
        chunk = {**self.head, "created": int(time.time())}
        if model is not None:
            chunk["model"] = model
        return {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}

    def chunks(self, event: str | Finished) -> list[bytes]:
        if isinstance(event, str):
            return [sse_event(self._chunk(event, None))]
        last = self._chunk("", event.done_reason or None)
        out = [sse_event(last)]
        if self.include_usage:
            out.append(sse_event({**last, "choices": [], "usage": _usage(event)}))
        return [*out, _DONE]

    def failure(self) -> list[bytes]:
        """The in-band error line decodes as an empty response: an empty chunk, no model."""
        return [sse_event(self._chunk("", None, model=""))]


class _CompleteWriter:
    """``CompleteWriter``: ``text_completion`` and its chunks (``choices`` before ``model``)."""

    def __init__(self, label: str, include_usage: bool) -> None:
        self.head = {**_head("cmpl", label), "object": "text_completion"}
        self.include_usage = include_usage
        self._zero = _usage(None) if include_usage else None

    def whole(self, text: str, final: Finished) -> dict[str, Any]:
        choice = {"text": text, "index": 0, "finish_reason": final.done_reason or None}
        return {**self.head, "choices": [choice], "usage": _usage(final)}

    def failure(self) -> list[bytes]:
        return [self._chunk([{"text": "", "index": 0, "finish_reason": None}], self._zero, "")]

    def chunks(self, event: str | Finished) -> list[bytes]:
        if isinstance(event, str):
            text, reason = event, None
        else:
            text, reason = "", event.done_reason or None
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
        return sse_event(chunk)


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``chat.completion`` or a stream of ``chat.completion.chunk`` events."""
    struct = "ChatCompletionRequest"
    body, stream, include_usage = await _read(request, struct)
    raw_messages = get_field(
        body, "messages", list, [], struct, go_type="[]openai.Message", early=True
    )
    if not raw_messages:
        raise ApiError(400, "[] is too short - 'messages'", early=True)
    native: dict[str, Any] = {
        "model": get_field(body, "model", str, "", struct, early=True),
        "messages": _chat_messages(raw_messages),
        "stream": stream,
        "options": _native_options(body, struct),
        "tools": get_field(body, "tools", list, [], struct, go_type="[]api.Tool", early=True),
        "think": _think(body, struct),
    }
    plan = await plan_chat(request.app[SIMULATOR], native)
    return await answer(request, plan, _ChatWriter(plan.label, include_usage), stream)


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    """``text_completion`` or a stream of them."""
    struct = "CompletionRequest"
    body, stream, include_usage = await _read(request, struct)
    logprobs = get_field(body, "logprobs", int, 0, struct, early=True)
    native = {
        "model": get_field(body, "model", str, "", struct, early=True),
        "prompt": get_field(body, "prompt", str, "", struct, early=True),
        "suffix": get_field(body, "suffix", str, "", struct, early=True),
        "stream": stream,
        "options": _native_options(body, struct),
        "top_logprobs": max(logprobs, 0),
    }
    plan = await plan_generate(request.app[SIMULATOR], native)
    return await answer(request, plan, _CompleteWriter(plan.label, include_usage), stream)


@routes.post("/v1/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    """An embedding list; ``encoding_format: base64`` gives little-endian float32 base64."""
    struct = "EmbedRequest"
    body = await read_body(request, "openai.EmbedRequest", missing="EOF", early=True)
    label = get_field(body, "model", str, "", struct, early=True)
    encoding = get_field(body, "encoding_format", str, "", struct, early=True)
    if encoding and encoding.lower() not in {"float", "base64"}:
        raise ApiError(
            400,
            f"Invalid value for 'encoding_format' = {encoding}. "
            "Supported values: ['float', 'base64'].",
            early=True,
        )
    raw = body.get("input")
    if raw == "":
        raw = [""]
    if raw is None or raw == []:
        raise ApiError(400, "invalid input", early=True)
    native = {
        "model": label,
        "input": raw,
        "dimensions": get_field(body, "dimensions", int, 0, struct, early=True),
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
    return encoded_response({"object": "list", "data": data, "model": label, "usage": usage})


def _base64(vector: list[float]) -> str:
    packed = array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def _model(model: StoredModel, model_id: str) -> dict[str, Any]:
    """``openai.Model``: owned by the name's namespace, created when it was last modified."""
    name = ModelName.parse(model_id)
    namespace = name.namespace if name is not None else ""
    return {
        "id": model_id,
        "object": "model",
        "created": int(model.modified_at),
        "owned_by": namespace,
    }


@routes.get("/v1/models", allow_head=False)
async def list_models(request: web.Request) -> web.Response:
    """Present models, most recently modified first (``data`` is null when there are none)."""
    models = request.app[SIMULATOR].store.all()
    data = [_model(model, model.name.display) for model in models] or None
    return encoded_response({"object": "list", "data": data})


@routes.get("/v1/models/{model}", allow_head=False)
async def retrieve_model(request: web.Request) -> web.Response:
    """One model, through the native show handler: 404 ``model 'x' not found`` when absent."""
    model_id = request.match_info["model"]
    name = ModelName.parse(model_id)
    if name is None:
        raise ApiError(400, "invalid model name")
    model = request.app[SIMULATOR].store.get(name)
    if model is None:
        raise ApiError(404, f"model '{model_id}' not found")
    return encoded_response(_model(model, model_id))
