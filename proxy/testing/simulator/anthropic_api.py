"""Ollama's Anthropic Messages API (``POST /v1/messages``), translated as Ollama 0.24.0 does it
(``anthropic/anthropic.go``, ``AnthropicMessagesMiddleware``): a native chat behind it.

``model``, a positive ``max_tokens`` (the native ``num_predict``) and ``messages`` are required;
``system`` (a string or text blocks) becomes a system message and each message's text blocks are
joined. ``thinking`` is relaxed as Ollama relaxes it for this API: a model that cannot think just
answers. The response is a ``message`` with one ``text`` block (``content`` is null when there is
no text), ``stop_reason`` ``end_turn`` or ``max_tokens``, and the usage. Ollama 0.24.0 does not
serve ``/v1/messages/count_tokens`` (404).

Streamed (``"stream": true``), it is server-sent events with named ``event:`` lines:
``message_start`` (its input tokens estimated from the request's length, a quarter of its bytes,
as Ollama does before the model has counted), ``content_block_start``, one ``content_block_delta``
per token, ``content_block_stop``, ``message_delta`` (stop reason and usage) and ``message_stop``.
There is no ``ping`` event. A runner failure mid-stream ends the stream cleanly with no further
event.

Errors are ``{"type": "error", "error": {"type", "message"}, "request_id": "req_..."}``, the type
from the status (400 ``invalid_request_error``, 404 ``not_found_error``, 401, 403, 429, 503/529,
else ``api_error``), written like the OpenAI API's (see :class:`~.wire.ApiError`).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from aiohttp import web

from .compat import answer
from .inference import Finished, plan_chat
from .runtime import SIMULATOR
from .wire import (
    ApiError,
    encoded_response,
    get_field,
    json_kind,
    json_response,
    read_body,
    sse_event,
)

__all__ = ["error_response", "routes"]

routes = web.RouteTableDef()
"""The Messages route, added to the app by :func:`~proxy.testing.simulator.create_app`."""

_STRUCT = "MessagesRequest"
_STREAM_HEADERS = {"Cache-Control": "no-cache", "Connection": "keep-alive"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


def _id(prefix: str) -> str:
    """``generateID``: the prefix and 12 random bytes in hex."""
    return f"{prefix}_{secrets.token_hex(12)}"


def error_body(status: int, message: str) -> dict[str, Any]:
    """``anthropic.NewError``."""
    kind = _ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": _id("req")}


def error_response(exc: ApiError) -> web.Response:
    """Anthropic's error body for ``exc``, as its stage writes it (see :class:`ApiError`)."""
    body = error_body(exc.status, exc.message)
    return json_response(body, exc.status) if exc.early else encoded_response(body, exc.status)


def _bad(message: str) -> ApiError:
    return ApiError(400, message, early=True)


def _blocks(raw: Any) -> list[dict[str, Any]]:
    """``MessageParam.UnmarshalJSON``: a string is one text block, else a list of blocks."""
    if isinstance(raw, str):
        return [{"type": "text", "text": raw}]
    if raw is None:
        return []
    if isinstance(raw, list) and all(isinstance(block, dict) for block in raw):
        return raw
    wrong = raw if not isinstance(raw, list) else next(b for b in raw if not isinstance(b, dict))
    go_type = "[]anthropic.ContentBlock" if wrong is raw else "anthropic.ContentBlock"
    raise _bad(
        f"json: cannot unmarshal {json_kind(wrong)} into Go struct field "
        f"{_STRUCT}.messages of type {go_type}"
    )


def _block_length(block: dict[str, Any]) -> int:
    """``countContentBlock``: text and thinking bytes, and whole tool blocks as JSON."""
    total = 0
    for key in ("text", "thinking"):
        if isinstance(block.get(key), str):
            total += len(block[key].encode())
    if block.get("type") in {"tool_use", "tool_result"}:
        total += len(json.dumps(block, separators=(",", ":")).encode())
    return total


def _estimate(
    system: Any, messages: list[tuple[str, list[dict[str, Any]]]], tools: list[Any]
) -> int:
    """``EstimateInputTokens``: a quarter of the request's bytes, at least 1."""
    total = 0
    if isinstance(system, str):
        total += len(system.encode())
    elif isinstance(system, list):
        total += sum(_block_length(block) for block in system if isinstance(block, dict))
    for role, blocks in messages:
        total += len(role.encode()) + sum(_block_length(block) for block in blocks)
    for tool in tools:
        if isinstance(tool, dict):
            schema = tool.get("input_schema")
            total += len(str(tool.get("name", "")).encode())
            total += len(str(tool.get("description", "")).encode())
            if schema is not None:
                total += len(json.dumps(schema, separators=(",", ":")).encode())
    tokens = total // 4
    return 1 if tokens == 0 and (messages or system is not None) else tokens


def _native_messages(
    system: Any, messages: list[tuple[str, list[dict[str, Any]]]]
) -> list[dict[str, str]]:
    """``FromMessagesRequest``: a system message, then each message's joined text.

    Raises:
        ApiError: (early) an image without a base64 source, a tool call without id or name.
    """
    out: list[dict[str, str]] = []
    if isinstance(system, str) and system:
        out.append({"role": "system", "content": system})
    elif isinstance(system, list):
        text = "".join(
            block["text"]
            for block in system
            if isinstance(block, dict)
            and block.get("type") == "text"
            and isinstance(block.get("text"), str)
        )
        if text:
            out.append({"role": "system", "content": text})
    for role, blocks in messages:
        text, tool_results = "", []
        for block in blocks:
            kind = block.get("type")
            if kind == "text" and isinstance(block.get("text"), str):
                text += block["text"]
            elif kind == "image":
                source = block.get("source")
                if not isinstance(source, dict):
                    raise _bad("invalid image source")
                if source.get("type") != "base64":
                    raise _bad(
                        f"invalid image source type: {source.get('type') or ''}. "
                        "Only base64 images are supported."
                    )
            elif kind == "tool_use":
                for key in ("id", "name"):
                    if not block.get(key):
                        raise _bad(f"tool_use block missing required '{key}' field")
            elif kind == "tool_result":
                content = block.get("content")
                tool_text = content if isinstance(content, str) else ""
                tool_results.append({"role": "tool", "content": tool_text})
        lowered = role.lower()
        if lowered == "user":
            out.extend(tool_results)
        if text:
            out.append({"role": lowered, "content": text})
        if lowered != "user":
            out.extend(tool_results)
    return out


class _AnthropicWriter:
    """``AnthropicWriter`` and its ``StreamConverter``."""

    def __init__(self, label: str, estimated_input_tokens: int) -> None:
        self.id = _id("msg")
        self.model = label
        self.estimate = estimated_input_tokens
        self._started = False
        self._text_started = False

    def whole(self, text: str, final: Finished) -> dict[str, Any]:
        response: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": text}] if text else None,
        }
        reason = self._stop_reason(final)
        if reason:
            response["stop_reason"] = reason
        usage = {"input_tokens": final.prompt_eval_count, "output_tokens": final.eval_count}
        return {**response, "usage": usage}

    @staticmethod
    def _stop_reason(final: Finished) -> str:
        reason = final.done_reason
        return _STOP_REASONS.get(reason, "stop_sequence") if reason else ""

    def _start(self, event: str | Finished | None) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        counted = event.prompt_eval_count if isinstance(event, Finished) else 0
        message = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "usage": {"input_tokens": counted or self.estimate, "output_tokens": 0},
        }
        return [sse_event({"type": "message_start", "message": message}, "message_start")]

    def chunks(self, event: str | Finished) -> list[bytes]:
        out = self._start(event)
        if isinstance(event, str) and event:
            if not self._text_started:
                self._text_started = True
                block = {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                }
                out.append(sse_event(block, "content_block_start"))
            delta = {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": event},
            }
            out.append(sse_event(delta, "content_block_delta"))
        if isinstance(event, Finished):
            if self._text_started:
                stop = {"type": "content_block_stop", "index": 0}
                out.append(sse_event(stop, "content_block_stop"))
            reason = self._stop_reason(event)
            usage = {"input_tokens": event.prompt_eval_count, "output_tokens": event.eval_count}
            delta_body = {
                "type": "message_delta",
                "delta": {"stop_reason": reason} if reason else {},
                "usage": usage,
            }
            out.append(sse_event(delta_body, "message_delta"))
            out.append(sse_event({"type": "message_stop"}, "message_stop"))
        return out

    def failure(self) -> list[bytes]:
        """An in-band error line reads as an empty chunk: nothing new to say."""
        return self._start(None)


@routes.post("/v1/messages")
async def messages(request: web.Request) -> web.StreamResponse:
    """A ``message``, or its stream of named events."""
    body = await read_body(request, "anthropic.MessagesRequest", missing="EOF", early=True)
    model = get_field(body, "model", str, "", _STRUCT, early=True)
    max_tokens = get_field(body, "max_tokens", int, 0, _STRUCT, early=True)
    raw_messages = get_field(
        body, "messages", list, [], _STRUCT, go_type="[]anthropic.MessageParam", early=True
    )
    stream = get_field(body, "stream", bool, False, _STRUCT, early=True)
    tools = get_field(body, "tools", list, [], _STRUCT, go_type="[]anthropic.Tool", early=True)
    parsed: list[tuple[str, list[dict[str, Any]]]] = []
    for item in raw_messages:
        if not isinstance(item, dict):
            raise _bad(
                f"json: cannot unmarshal {json_kind(item)} into Go value of type "
                "anthropic.MessageParam"
            )
        role = get_field(item, "role", str, "", f"{_STRUCT}.messages", early=True)
        parsed.append((role, _blocks(item.get("content"))))
    if not model:
        raise _bad("model is required")
    if max_tokens <= 0:
        raise _bad("max_tokens is required and must be positive")
    if not parsed:
        raise _bad("messages is required")
    system = body.get("system")
    native = {
        "model": model,
        "messages": _native_messages(system, parsed),
        "stream": stream,
        "options": {"num_predict": max_tokens},
        "tools": tools,
    }
    plan = await plan_chat(request.app[SIMULATOR], native)
    writer = _AnthropicWriter(plan.label, _estimate(system, parsed, tools))
    return await answer(request, plan, writer, stream, _STREAM_HEADERS)
