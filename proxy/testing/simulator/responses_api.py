"""Ollama's OpenAI Responses API (``POST /v1/responses``), translated as Ollama 0.24.0 does it
(``openai/responses.go``, ``ResponsesMiddleware``): a native chat behind it.

``input`` is a string (one user message) or a list of items (``message`` with string or content
parts, ``function_call``, ``function_call_output``, ``reasoning``); ``instructions`` becomes a
system message, ``max_output_tokens`` the native ``num_predict``, ``reasoning.effort`` the native
``think`` (``none`` is off; an unknown effort is a 400). The response is a ``response`` object
whose ``status`` is ``completed`` however generation stopped (Ollama does not report
``incomplete``), echoing the request's settings with OpenAI's defaults.

Streamed (``"stream": true``), it is server-sent events with named ``event:`` lines, each data
object carrying its ``type`` and a ``sequence_number`` (keys sorted, as Go marshals maps):
``response.created``, ``response.in_progress``, then with the first text
``response.output_item.added`` and ``response.content_part.added``, one
``response.output_text.delta`` per token, and at the end ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done`` and ``response.completed``. There
is no ``[DONE]``. A runner failure mid-stream ends the stream cleanly with no further event
(Ollama's writer finds nothing to say about the in-band error line).

Errors are OpenAI's ``{"error": {...}}`` (see :mod:`~proxy.testing.simulator.openai_api`).
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from aiohttp import web

from .compat import answer
from .inference import Finished, plan_chat
from .runtime import SIMULATOR
from .wire import ApiError, get_field, json_kind, read_body, sse_event

__all__ = ["routes"]

routes = web.RouteTableDef()
"""The Responses route, added to the app by :func:`~proxy.testing.simulator.create_app`."""

_STRUCT = "ResponsesRequest"
_EFFORTS = ("low", "medium", "high", "max")
_STREAM_HEADERS = {"Cache-Control": "no-cache", "Connection": "keep-alive"}
_CONTENT_TYPES = ("input_text", "input_image", "output_text", "input_file")
_NO_FILES = "file inputs are not currently supported"


def _bad(message: str) -> ApiError:
    return ApiError(400, message, early=True)


def _not_a_list(value: Any) -> str:
    return f"json: cannot unmarshal {json_kind(value)} into Go value of type []json.RawMessage"


def _content_text(raw: Any) -> str:
    """A message's content (a string, or parts of known types) as one text.

    Raises:
        ApiError: (early) what ``ResponsesInputMessage.UnmarshalJSON`` rejects, or a file part.
    """
    if raw is None:
        return ""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise _bad(f"content must be a string or array: {_not_a_list(raw)}")
    text = ""
    for index, part in enumerate(raw):
        kind = part.get("type", "") if isinstance(part, dict) else ""
        if kind not in _CONTENT_TYPES:
            raise _bad(f"content[{index}]: unknown content type: {kind}")
        if kind == "input_file":
            raise _bad(_NO_FILES)
        if kind in {"input_text", "output_text"}:
            text += get_field(part, "text", str, "", "ResponsesTextContent", early=True)
    return text


def _items(raw: list[Any]) -> list[dict[str, Any]]:
    """Input items as native messages (``FromResponsesRequest``).

    Raises:
        ApiError: (early) an item Ollama cannot read.
    """
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _bad(f"input[{index}]: json: cannot unmarshal {json_kind(item)} into Go value")
        kind = item.get("type") or ("message" if item.get("role") else "")
        try:
            if kind == "message":
                text = _content_text(item.get("content"))
                messages.append({"role": str(item.get("role", "")), "content": text})
            elif kind == "function_call":
                call = {"function": {"name": item.get("name", ""), "arguments": {}}}
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant":
                    last.setdefault("tool_calls", []).append(call)
                else:
                    messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            elif kind == "function_call_output":
                output = item.get("output")
                text = output if isinstance(output, str) else _content_text(output)
                messages.append({"role": "tool", "content": text})
            elif kind != "reasoning":
                raise _bad(
                    f"unknown input item type: {json.dumps(kind)}"
                    if kind
                    else "input item missing required 'type' field"
                )
        except ApiError as exc:
            if exc.message == _NO_FILES:  # found after decoding, not while
                raise
            raise _bad(f"input[{index}]: {exc.message}") from None
    return messages


def _think(reasoning: dict[str, Any]) -> bool | str | None:
    effort = get_field(reasoning, "effort", str, "", f"{_STRUCT}.reasoning", early=True)
    if not effort:
        return None
    if effort == "none":
        return False
    if effort not in _EFFORTS:
        raise _bad(
            f'invalid reasoning value: "{effort}" '
            '(must be "high", "medium", "low", "max", or "none")'
        )
    return effort


def _go_number(value: float) -> float | int:
    """Go marshals a whole float64 without a fraction (``1``, not ``1.0``)."""
    return int(value) if value.is_integer() else value


def _sorted(value: Any) -> Any:
    """A Go ``map[string]any`` as ``json.Marshal`` writes it: keys sorted, all the way down."""
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


class _Request:
    """The settings of a Responses request that its response echoes."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.model = get_field(body, "model", str, "", _STRUCT, early=True)
        self.background = get_field(body, "background", bool, False, _STRUCT, early=True)
        self.instructions = get_field(body, "instructions", str, "", _STRUCT, early=True)
        self.max_output_tokens: int | None = None
        if body.get("max_output_tokens") is not None:
            self.max_output_tokens = get_field(
                body, "max_output_tokens", int, 0, _STRUCT, early=True
            )
        self.reasoning = get_field(
            body, "reasoning", dict, {}, _STRUCT, go_type="openai.ResponsesReasoning", early=True
        )
        self.temperature = get_field(body, "temperature", float, 1.0, _STRUCT, early=True)
        self.top_p = get_field(body, "top_p", float, 1.0, _STRUCT, early=True)
        self.truncation = get_field(body, "truncation", str, "disabled", _STRUCT, early=True)
        text = get_field(
            body, "text", dict, {}, _STRUCT, go_type="*openai.ResponsesText", early=True
        )
        self.format = text.get("format") if isinstance(text.get("format"), dict) else None
        self.tools = [
            tool if isinstance(tool, dict) else {}
            for tool in get_field(
                body, "tools", list, [], _STRUCT, go_type="[]openai.ResponsesTool", early=True
            )
        ]
        self.stream = get_field(body, "stream", bool, False, _STRUCT, early=True)

    def tool_list(self) -> list[dict[str, Any]]:
        return [
            {
                "type": tool.get("type", ""),
                "name": tool.get("name", ""),
                "description": tool.get("description"),
                "strict": tool.get("strict"),
                "parameters": tool.get("parameters"),
            }
            for tool in self.tools
        ]

    def reasoning_echo(self) -> dict[str, Any] | None:
        effort, summary = self.reasoning.get("effort"), self.reasoning.get("summary")
        if not effort and not summary:
            return None
        return {key: value for key, value in (("effort", effort), ("summary", summary)) if value}

    def response(self, response_id: str, status: str, created: int) -> dict[str, Any]:
        """The ``response`` object around output and usage (Go's struct order)."""
        text_format = self.format if self.format is not None else {"type": "text"}
        return {
            "id": response_id,
            "object": "response",
            "created_at": created,
            "completed_at": None,
            "status": status,
            "incomplete_details": None,
            "model": self.model,
            "previous_response_id": None,
            "instructions": self.instructions or None,
            "output": [],
            "error": None,
            "tools": self.tool_list(),
            "tool_choice": "auto",
            "truncation": self.truncation,
            "parallel_tool_calls": True,
            "text": {"format": text_format},
            "top_p": _go_number(self.top_p),
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "top_logprobs": 0,
            "temperature": _go_number(self.temperature),
            "reasoning": self.reasoning_echo(),
            "usage": None,
            "max_output_tokens": self.max_output_tokens,
            "max_tool_calls": None,
            "store": False,
            "background": self.background,
            "service_tier": "default",
            "metadata": {},
            "safety_identifier": None,
            "prompt_cache_key": None,
        }


def _usage(final: Finished) -> dict[str, Any]:
    return {
        "input_tokens": final.prompt_eval_count,
        "output_tokens": final.eval_count,
        "total_tokens": final.prompt_eval_count + final.eval_count,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class _ResponsesWriter:
    """``ResponsesWriter`` and its ``ResponsesStreamConverter``."""

    def __init__(self, request: _Request) -> None:
        self.request = request
        self.response_id = f"resp_{random.randrange(999999)}"  # noqa: S311 - as Ollama does
        self.item_id = f"msg_{random.randrange(999999)}"  # noqa: S311
        self._sequence = 0
        self._started = False
        self._text: str | None = None

    def _message(self, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
        item = {"id": self.item_id, "type": "message", "status": status, "role": "assistant"}
        return {**item, "content": content}

    def whole(self, text: str, final: Finished) -> dict[str, Any]:
        now = int(time.time())
        response = self.request.response(self.response_id, "completed", now)
        response["completed_at"] = now
        response["output"] = [self._message("completed", [_part(text)])]
        response["usage"] = _usage(final)
        return response

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        payload = _sorted({**data, "type": kind, "sequence_number": self._sequence})
        self._sequence += 1
        return sse_event(payload, kind)

    def _opening(self) -> list[bytes]:
        """``response.created`` and ``response.in_progress``, before the first chunk's events."""
        if self._started:
            return []
        self._started = True
        response = self.request.response(self.response_id, "in_progress", int(time.time()))
        kinds = ("response.created", "response.in_progress")
        return [self._event(kind, {"response": response}) for kind in kinds]

    def chunks(self, event: str | Finished) -> list[bytes]:
        out = self._opening()
        where = {"item_id": self.item_id, "output_index": 0}
        if isinstance(event, str) and event:
            if self._text is None:
                self._text = ""
                item = self._message("in_progress", [])
                out.append(
                    self._event("response.output_item.added", {"output_index": 0, "item": item})
                )
                out.append(
                    self._event(
                        "response.content_part.added",
                        {**where, "content_index": 0, "part": _part("")},
                    )
                )
            self._text += event
            out.append(
                self._event(
                    "response.output_text.delta",
                    {**where, "content_index": 0, "delta": event, "logprobs": []},
                )
            )
        if isinstance(event, Finished):
            out.extend(self._closing(event))
        return out

    def _closing(self, final: Finished) -> list[bytes]:
        out: list[bytes] = []
        output: list[dict[str, Any]] | None = None
        if self._text is not None:
            text, where = self._text, {"item_id": self.item_id, "output_index": 0}
            item = self._message("completed", [_part(text)])
            out.append(
                self._event(
                    "response.output_text.done",
                    {**where, "content_index": 0, "text": text, "logprobs": []},
                )
            )
            out.append(
                self._event(
                    "response.content_part.done", {**where, "content_index": 0, "part": _part(text)}
                )
            )
            out.append(self._event("response.output_item.done", {"output_index": 0, "item": item}))
            output = [item]
        now = int(time.time())
        response = self.request.response(self.response_id, "completed", now)
        response.update(completed_at=now, output=output, usage=_usage(final))
        out.append(self._event("response.completed", {"response": response}))
        return out

    def failure(self) -> list[bytes]:
        """An in-band error line reads as an empty chunk: nothing new to say."""
        return self._opening()


@routes.post("/v1/responses")
async def responses(request: web.Request) -> web.StreamResponse:
    """A ``response`` object, or its stream of named events."""
    body = await read_body(request, "openai.ResponsesRequest", missing="EOF", early=True)
    settings = _Request(body)
    raw_input = body.get("input")
    messages: list[dict[str, Any]] = []
    if settings.instructions:
        messages.append({"role": "system", "content": settings.instructions})
    if isinstance(raw_input, str):
        if raw_input:
            messages.append({"role": "user", "content": raw_input})
    elif isinstance(raw_input, list):
        messages.extend(_items(raw_input))
    elif raw_input is not None:
        raise _bad(f"input must be a string or array: {_not_a_list(raw_input)}")
    options: dict[str, Any] = {"temperature": settings.temperature}
    if settings.max_output_tokens is not None:
        options["num_predict"] = settings.max_output_tokens
    native = {
        "model": settings.model,
        "messages": messages,
        "stream": settings.stream,
        "options": options,
        "tools": settings.tools,
        "think": _think(settings.reasoning),
    }
    plan = await plan_chat(request.app[SIMULATOR], native)
    writer = _ResponsesWriter(settings)
    return await answer(request, plan, writer, settings.stream, _STREAM_HEADERS)
