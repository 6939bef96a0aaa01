"""Bytes out as Ollama's Go server writes them (and JSON in as it reads it): JSON, time stamps,
log lines and streams.

Request bodies are decoded as Gin's ``ShouldBindJSON`` does (:mod:`.gojson`: the first
value, with ``encoding/json``'s error wording), responses encoded with its HTML escaping; time
stamps are formatted as Go marshals ``time.Time``. Log lines go to stderr as Go ``slog`` text
(each with ``simulated=true``) and Gin access lines. Streamed responses are written one chunk (an
NDJSON line or an SSE event) at a time by :class:`ChunkStream`, which applies the stream faults
``SIM_STREAM_CUT_AFTER``, ``SIM_STREAM_ERROR_AFTER`` and ``SIM_CRASH_AFTER``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from aiohttp import web

from .config import Faults
from .gojson import GoSyntaxError, decode_first

__all__ = [
    "ApiError",
    "ChunkStream",
    "StreamAborted",
    "access",
    "drop_connection",
    "dumps",
    "encoded_response",
    "error_response",
    "format_local",
    "get_field",
    "json_kind",
    "json_response",
    "log",
    "open_stream",
    "read_body",
    "rfc3339_utc",
    "sse_event",
]

_T = TypeVar("_T")
_GO_TYPES: dict[type, str] = {
    str: "string",
    bool: "bool",
    int: "int",
    float: "float64",
    list: "[]interface {}",
    dict: "map[string]interface {}",
}
# Go saturates "forever" at MaxInt64 nanoseconds (about 292 years).
_MAX_SECONDS = (2**63 - 1) / 1e9


class ApiError(Exception):
    """A request failure with the HTTP status and message Ollama would send.

    ``early`` marks a failure found by an API translation middleware (OpenAI, Responses,
    Anthropic) before the native handler ran: Gin's ``AbortWithStatusJSON`` writes it
    (``application/json; charset=utf-8``, no trailing newline), where the handler's own failures
    pass through the API's response writer (``application/json`` and a newline).
    """

    def __init__(self, status: int, message: str, *, early: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.early = early


def dumps(value: Any) -> str:
    """Compact JSON with Go's HTML escaping of ``<``, ``>`` and ``&``."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if "<" in text or ">" in text or "&" in text:
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text


def json_response(value: Any, status: int = 200) -> web.Response:
    """Gin's ``c.JSON``: ``application/json; charset=utf-8``."""
    return web.Response(text=dumps(value), status=status, content_type="application/json")


def error_response(status: int, message: str) -> web.Response:
    """Ollama's native error body ``{"error": "..."}``."""
    return json_response({"error": message}, status)


def encoded_response(value: Any, status: int = 200) -> web.Response:
    """``json.NewEncoder(w).Encode`` in a compatibility writer: ``application/json``, a newline."""
    body = (dumps(value) + "\n").encode()
    return web.Response(body=body, status=status, headers={"Content-Type": "application/json"})


def sse_event(value: Any, event: str | None = None) -> bytes:
    """One server-sent event: ``data: {json}`` after an ``event:`` line when named."""
    data = b"data: " + dumps(value).encode() + b"\n\n"
    return f"event: {event}\n".encode() + data if event else data


async def read_body(
    request: web.Request,
    struct: str,
    missing: str = "missing request body",
    *,
    early: bool = False,
) -> dict[str, Any]:
    """Decode a JSON object body as Gin does: the first JSON value, Go's error wording.

    Args:
        request: the request.
        struct: the Go type decoded into, for ``cannot unmarshal`` messages (``api.ChatRequest``).
        missing: the message for an empty body (Go's ``EOF`` where the handler does not map it).
        early: raise the failures as an API middleware's (see :class:`ApiError`).

    Raises:
        ApiError: 400 for an empty, malformed or non-object body.
    """
    raw = await request.read()
    try:
        data = decode_first(raw.decode("utf-8", errors="replace"))  # invalid UTF-8: U+FFFD
    except GoSyntaxError as exc:
        message = missing if exc.empty else str(exc)
        raise ApiError(400, message, early=early) from None
    if data is None:
        return {}  # null decodes into a struct as nothing at all
    if not isinstance(data, dict):
        raise ApiError(
            400,
            f"json: cannot unmarshal {json_kind(data)} into Go value of type {struct}",
            early=early,
        )
    return data


def get_field(
    body: dict[str, Any],
    key: str,
    kind: type[_T],
    default: _T,
    struct: str,
    *,
    go_type: str | None = None,
    early: bool = False,
) -> _T:
    """``body[key]`` checked against a Go field type; JSON ``null`` gives ``default``.

    ``go_type`` names the Go type in the error when it is not the plain one for ``kind``
    (``[]api.Message`` rather than ``[]interface {}``); ``early`` as for :class:`ApiError`.

    Raises:
        ApiError: 400 with Go's ``cannot unmarshal`` message when the type is wrong.
    """
    value = body.get(key)
    if value is None:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # type: ignore[return-value]
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)  # type: ignore[return-value]
    raise ApiError(
        400,
        f"json: cannot unmarshal {json_kind(value)} into Go struct field {struct}.{key} "
        f"of type {go_type or _GO_TYPES[kind]}",
        early=early,
    )


def json_kind(value: Any) -> str:
    """The JSON kind of a decoded value as Go's errors name it (``number``, ``object``)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def rfc3339_utc(ns: int | None = None) -> str:
    """``time.Now().UTC()`` as Go marshals it: RFC 3339 with trimmed nanoseconds and ``Z``."""
    ns = time.time_ns() if ns is None else ns
    sec, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{base}.{frac:09d}".rstrip("0") + "Z" if frac else base + "Z"


def format_local(timestamp: float) -> str:
    """A local wall-clock time as Go marshals it (``Z`` for UTC, else ``±hh:mm``)."""
    seconds = min(timestamp, time.time() + _MAX_SECONDS)
    text = datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="microseconds")
    stamp, offset = text[:-6], text[-6:]
    if "." in stamp:
        stamp = stamp.rstrip("0").rstrip(".")
    return stamp + ("Z" if offset == "+00:00" else offset)


def _value(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\\') or not text.isprintable():
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def log(level: str, source: str, msg: str, **attrs: object) -> None:
    """Write ``time=… level=… source=… msg="…" key=value simulated=true`` to stderr, like slog."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    parts = [f"time={stamp}", f"level={level}", f"source={source}", f"msg={_value(msg)}"]
    parts.extend(f"{key}={_value(value)}" for key, value in {**attrs, "simulated": "true"}.items())
    sys.stderr.write(" ".join(parts) + "\n")
    sys.stderr.flush()


def access(status: int, seconds: float, client: str, method: str, path: str) -> None:
    """Write a Gin access line: ``[GIN] 2026/01/02 - 15:04:05 | 200 | 1.2ms | ... | POST "/x"``."""
    if seconds < 1e-3:
        latency = f"{seconds * 1e6:.3f}µs"
    elif seconds < 1:
        latency = f"{seconds * 1e3:.6f}ms"
    else:
        latency = f"{seconds:.9f}s"
    stamp = time.strftime("%Y/%m/%d - %H:%M:%S")
    sys.stderr.write(
        f'[GIN] {stamp} | {status:3d} | {latency:>13} | {client:>15} | {method:<7} "{path}"\n'
    )
    sys.stderr.flush()


class StreamAborted(Exception):
    """The connection was dropped on purpose (``SIM_STREAM_CUT_AFTER``)."""


def drop_connection(request: web.Request) -> None:
    """Close the client connection after flushing what was written; no terminating chunk."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def open_stream(
    request: web.Request, content_type: str, headers: Mapping[str, str] | None = None
) -> web.StreamResponse:
    """Send the 200 headers of a chunked stream."""
    response = web.StreamResponse(headers={"Content-Type": content_type, **(headers or {})})
    await response.prepare(request)
    return response


class ChunkStream:
    """Writes one chunk (an NDJSON line or an SSE event) at a time and applies stream faults."""

    def __init__(
        self,
        request: web.Request,
        response: web.StreamResponse,
        faults: Faults,
        crash: Callable[[], None] | None,
    ) -> None:
        """``crash`` (``SIM_CRASH_AFTER``) is called right after the first chunk was written."""
        self._request = request
        self._response = response
        self._crash = crash
        self._cut_after = faults.stream_cut_after
        self._error_after = faults.stream_error_after
        self.sent = 0

    @property
    def failing(self) -> bool:
        """Whether the next chunk must be the mid-stream failure (``SIM_STREAM_ERROR_AFTER``)."""
        return self._error_after is not None and self.sent >= self._error_after

    async def send(self, data: bytes) -> None:
        """Write one chunk.

        Raises:
            StreamAborted: the stream was cut (``SIM_STREAM_CUT_AFTER``); the connection is closed.
        """
        self._cut_if_due()
        await self._response.write(data)
        self.sent += 1
        if self._crash is not None:
            self._crash()
        self._cut_if_due()

    async def finish(self) -> None:
        """End the stream cleanly (terminating chunk)."""
        await self._response.write_eof()

    def _cut_if_due(self) -> None:
        if self._cut_after is not None and self.sent >= self._cut_after:
            drop_connection(self._request)
            raise StreamAborted
