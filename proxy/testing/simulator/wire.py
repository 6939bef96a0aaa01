"""Bytes out as Ollama's Go server writes them (and JSON in as it reads it): JSON, time stamps,
log lines and streams.

Request bodies are decoded with ``encoding/json``'s error wording, responses encoded with its HTML
escaping; time stamps are formatted as Go marshals ``time.Time``. Log lines go to stderr as Go
``slog`` text (each with ``simulated=true``) and Gin access lines. Streamed responses are written
one chunk (an NDJSON line or an SSE event) at a time by :class:`ChunkStream`, which applies the
stream faults ``SIM_STREAM_CUT_AFTER``, ``SIM_STREAM_ERROR_AFTER`` and ``SIM_CRASH_AFTER``.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from aiohttp import web

from .config import Faults

__all__ = [
    "ApiError",
    "ChunkStream",
    "StreamAborted",
    "access",
    "drop_connection",
    "dumps",
    "error_response",
    "format_local",
    "get_field",
    "json_response",
    "log",
    "open_stream",
    "read_body",
    "rfc3339_utc",
]

_T = TypeVar("_T")
_GO_TYPES: dict[type, str] = {str: "string", bool: "bool", int: "int", float: "float64"}
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Go saturates "forever" at MaxInt64 nanoseconds (about 292 years).
_MAX_SECONDS = (2**63 - 1) / 1e9


class ApiError(Exception):
    """A request failure with the HTTP status and message Ollama would send."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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


async def read_body(
    request: web.Request, struct: str, missing: str = "missing request body"
) -> dict[str, Any]:
    """Decode a JSON object body; errors carry Go's ``encoding/json`` wording.

    Raises:
        ApiError: 400 for an empty, malformed or non-object body.
    """
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, missing)
    try:
        # Go's encoding/json turns a lone UTF-16 surrogate escape into U+FFFD.
        data = json.loads(raw, object_pairs_hook=_replace_surrogates)
    except UnicodeDecodeError:
        raise ApiError(400, "invalid character looking for beginning of value") from None
    except json.JSONDecodeError as exc:
        if exc.pos >= len(exc.doc.rstrip()):
            raise ApiError(400, "unexpected EOF") from None
        raise ApiError(
            400, f"invalid character '{exc.doc[exc.pos]}' looking for beginning of value"
        ) from None
    if not isinstance(data, dict):
        raise ApiError(
            400, f"json: cannot unmarshal {_json_kind(data)} into Go value of type {struct}"
        )
    return data


def _replace_surrogates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {_LONE_SURROGATE.sub("\ufffd", key): _valid_value(value) for key, value in pairs}


def _valid_value(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_valid_value(item) for item in value]
    return value  # objects were already rebuilt by the hook


def get_field(body: dict[str, Any], key: str, kind: type[_T], default: _T, struct: str) -> _T:
    """``body[key]`` checked against a Go field type; JSON ``null`` gives ``default``.

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
    go_type = _GO_TYPES.get(kind, "[]interface {}" if kind is list else "map[string]interface {}")
    raise ApiError(
        400,
        f"json: cannot unmarshal {_json_kind(value)} into Go struct field {struct}.{key} "
        f"of type {go_type}",
    )


def _json_kind(value: Any) -> str:
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


async def open_stream(request: web.Request, content_type: str) -> web.StreamResponse:
    """Send the 200 headers of a chunked stream."""
    response = web.StreamResponse(headers={"Content-Type": content_type})
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
