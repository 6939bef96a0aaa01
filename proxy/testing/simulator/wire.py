"""JSON on the wire the way Ollama's Go server writes and reads it."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from aiohttp import web

__all__ = [
    "ApiError",
    "dumps",
    "error_response",
    "get_field",
    "json_response",
    "read_body",
]

_T = TypeVar("_T")
_GO_TYPES: dict[type, str] = {str: "string", bool: "bool", int: "int", float: "float64"}


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


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _replace_surrogates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {_valid_text(key): _valid_value(value) for key, value in pairs}


def _valid_value(value: Any) -> Any:
    if isinstance(value, str):
        return _valid_text(value)
    if isinstance(value, list):
        return [_valid_value(item) for item in value]
    return value  # objects were already rebuilt by the hook


def _valid_text(text: str) -> str:
    return _LONE_SURROGATE.sub("\ufffd", text)


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
