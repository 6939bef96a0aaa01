"""A UbiOps request's way to the proxy and back, and what its caller is told when it fails.

A plain-input UbiOps request carries an API body as JSON text. :func:`route` picks the proxy
endpoint it goes to: the one its ``"endpoint"`` field names (that field is taken out), else the
first whose input field the payload carries and whose model kind fits the requested model, so
``messages`` goes to chat completions, ``prompt`` to completions, and ``input`` to the Responses
API for a chat model and to embeddings for an embedding model. The proxy judges everything else.

Nothing is re-serialised unless an ``"endpoint"`` field has to be taken out: JSON text is sent as
that text, and a streamed answer is relayed as the data text of each event (:func:`relay_events`)
and returned as those texts joined into a JSON list. One change to a payload: a streamed chat
completion without ``stream_options`` gets ``"stream_options": {"include_usage": true}`` (as
UbiOps' own LLM tutorials send), so the answer ends with one more chunk, ``choices: []`` and the
token ``usage``, that UbiOps' token metrics read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from proxy.catalog import Catalog, UnknownModelError
from proxy.endpoints import Endpoint, Framing, ubiops_endpoints
from proxy.sse import SSEDecoder

__all__ = [
    "ENDPOINT_FIELD",
    "ProxyUnavailableError",
    "PublicError",
    "RequestFailedError",
    "Routed",
    "StreamCallback",
    "body_of",
    "error_message",
    "relay_events",
    "route",
]

StreamCallback = Callable[[str], object]

ENDPOINT_FIELD = "endpoint"
"""The payload field that names the endpoint outright (``"/v1/messages"`` for Anthropic's API)."""

_ENDPOINTS = ubiops_endpoints()
_BY_PATH = {endpoint.path: endpoint for endpoint in _ENDPOINTS}
_CHAT_PATH = "/v1/chat/completions"
_USAGE_OPTION = b'"stream_options":{"include_usage":true},'
_DONE = "[DONE]"
_LAST_EVENTS = {
    Framing.SSE_RESPONSES: frozenset({"response.completed", "response.incomplete"}),
    Framing.SSE_ANTHROPIC: frozenset({"message_stop"}),
}
"""The events that end a stream of named events well; ``_FAILED`` ones end it badly."""
_FAILED = frozenset({"error", "response.failed"})


class PublicError(Exception):
    """An error whose ``public_error_message`` UbiOps shows to the caller as the request error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.public_error_message = message


class ProxyUnavailableError(PublicError):
    """The proxy is not reachable, not ready, or never became ready."""


class RequestFailedError(PublicError):
    """The request cannot be sent, or the proxy answered it with an error (``status``)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Routed:
    """Where a UbiOps request goes and the body it is sent with."""

    endpoint: Endpoint
    body: bytes


def route(body: bytes, catalog: Catalog) -> Routed:
    """The endpoint a UbiOps payload goes to and the body to send it (module doc).

    A payload that is not a JSON object goes to chat completions, whose answer says why.

    Raises:
        RequestFailedError: the ``"endpoint"`` field names no endpoint a request can reach.
    """
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        payload = None
    if not isinstance(payload, dict):
        return Routed(_ENDPOINTS[0], body)
    if ENDPOINT_FIELD in payload:
        endpoint = _named(payload.pop(ENDPOINT_FIELD))
        body = json.dumps(payload, ensure_ascii=False).encode()
    else:
        endpoint = _by_fields(payload, catalog)
    if endpoint.path == _CHAT_PATH and payload.get("stream") is True:
        body = _with_usage(body, payload)
    return Routed(endpoint, body)


def _named(path: object) -> Endpoint:
    endpoint = _BY_PATH.get(path) if isinstance(path, str) else None
    if endpoint is None:
        raise RequestFailedError(
            f"The {ENDPOINT_FIELD!r} field must be one of {', '.join(_BY_PATH)}, "
            f"not {json.dumps(path)[:100]}.",
            400,
        )
    return endpoint


def _by_fields(payload: dict[str, object], catalog: Catalog) -> Endpoint:
    """The first endpoint whose field the payload has and whose kind fits its model."""
    candidates = [e for e in _ENDPOINTS if e.ubiops_field in payload] or [_ENDPOINTS[0]]
    model = payload.get("model")
    try:
        kind = catalog.resolve(model).kind if isinstance(model, str) else None
    except UnknownModelError:  # the proxy's answer names the models there are
        kind = None
    return next((e for e in candidates if e.kind is kind), candidates[0])


def _with_usage(body: bytes, payload: dict[str, object]) -> bytes:
    """A streamed chat's body asking for token usage, unless it says what it wants."""
    if "stream_options" in payload:
        return body
    start = len(body) - len(body.lstrip())
    if body[start : start + 1] != b"{":
        return body
    return body[: start + 1] + _USAGE_OPTION + body[start + 1 :]


def body_of(data: object) -> bytes:
    """The request body: JSON text as it came, anything else as JSON.

    Raises:
        RequestFailedError: ``data`` cannot be written as JSON.
    """
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    if isinstance(data, str):
        return data.encode("utf-8", "surrogatepass")
    try:
        return json.dumps(data).encode()
    except RecursionError:
        raise RequestFailedError("the request body is nested too deeply") from None
    except (TypeError, ValueError) as exc:
        raise RequestFailedError(f"The request cannot be sent as JSON: {exc}.") from None


async def relay_events(
    resp: aiohttp.ClientResponse, framing: Framing, streaming_update: StreamCallback | None
) -> str:
    """Relay each event's data text through ``streaming_update``; return them as a JSON list.

    OpenAI chat and completions streams end with ``[DONE]`` (not relayed); Responses and
    Anthropic streams with their last named event (relayed). An error event fails the request.

    Raises:
        RequestFailedError: the answer failed, or the stream ended before its end.
    """
    chunks: list[str] = []
    last_events = _LAST_EVENTS.get(framing)
    decoder = SSEDecoder()
    async for piece in resp.content.iter_any():
        for name, text in decoder.feed(piece):
            if last_events is None and text == _DONE:
                return "[" + ",".join(chunks) + "]"
            failed = name in _FAILED or (last_events is None and '"error"' in text)
            if failed and (error := _error_of(text)) is not None:
                raise RequestFailedError(f"The answer failed after {len(chunks)} chunks: {error}")
            chunks.append(text)
            if streaming_update is not None:
                streaming_update(text)
            if last_events is not None and name in last_events:
                return "[" + ",".join(chunks) + "]"
    end = "[DONE]" if last_events is None else "its final event"
    raise RequestFailedError(
        f"The model server ended the stream early, after {len(chunks)} chunks and without "
        f"{end}; the answer is incomplete. Retry the request."
    )


def error_message(raw: bytes) -> str:
    """The message of an error answer of the proxy, as it worded it."""
    text = raw.decode(errors="replace")
    return _error_of(text) or text.strip()[:500] or "the model server gave no details"


def _error_of(text: str) -> str | None:
    """The message of an event or body that reports an error, or None for anything else.

    The error is the document's ``error`` (OpenAI, Ollama, Anthropic) or its response's
    (a Responses ``response.failed`` event); its ``message`` when it is an object.
    """
    try:
        document = json.loads(text)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    error = document.get("error")
    response = document.get("response")
    if error is None and isinstance(response, dict):
        error = response.get("error")
    if isinstance(error, dict):
        error = error.get("message") or json.dumps(error)
    return str(error) if error else None
