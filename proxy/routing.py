"""Model routes shared by both APIs: parse just enough, resolve the model, forward, relay.

An :class:`Endpoint` describes one model-bearing route (its Ollama path, the model kind it needs,
the fields the proxy relies on and their JSON types); :func:`model_handler` makes its handler.
The request body is parsed once with ``json.loads``, its ``model`` replaced by the catalog's
Ollama tag, and serialised once; everything after that (the response) is relayed as bytes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from proxy.appkeys import EXCHANGE, GUARD, SETTINGS, STATE, UPSTREAM
from proxy.catalog import Model, ModelKind, UnknownModelError, name_key
from proxy.errors import (
    BadRequestError,
    ModelNotFoundError,
    ModelUnavailableError,
    RequestTimeoutError,
    WrongModelKindError,
)
from proxy.relay import relay
from proxy.state import OllamaStatus

__all__ = [
    "Endpoint",
    "Handler",
    "fetch_ollama_tags",
    "model_handler",
    "read_json_object",
    "resolve_model",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

JSON_HEADERS: Mapping[str, str] = {"Content-Type": "application/json"}
_UNAVAILABLE_RETRY_AFTER = 5
_TAGS_TIMEOUT = aiohttp.ClientTimeout(total=2.0)
_JSON_TYPE_NAMES = {
    str: "a string",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    int: "a number",
    float: "a number",
    type(None): "null",
}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One model-bearing route.

    Attributes:
        upstream_path: the Ollama path the request is forwarded to.
        kind: the model kind the route needs (``None``: any kind).
        stream_default: what a missing ``stream`` means (``None``: the route never streams).
        fields: ``(name, allowed JSON types, required)`` of each field the proxy relies on.
        guarded: whether the request takes a slot of the concurrency guard (inference does).
        name_fields: the fields that may carry the model name, in order of precedence.
    """

    upstream_path: str
    kind: ModelKind | None
    stream_default: bool | None
    fields: tuple[tuple[str, tuple[type, ...], bool], ...] = ()
    guarded: bool = True
    name_fields: tuple[str, ...] = ("model",)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object.

    Raises:
        BadRequestError: empty body, invalid JSON, or JSON that is not an object.
        aiohttp.web.HTTPRequestEntityTooLarge: over ``client_max_size`` (mapped to 413).
    """
    try:
        async with asyncio.timeout(request.app[SETTINGS].proxy_client_timeout):
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeoutError(
            "the request body did not arrive in time; send it whole and promptly"
        ) from None
    if not raw.strip():
        raise BadRequestError("the request body is empty; send a JSON object")
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except ValueError as exc:
        raise BadRequestError(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequestError("the request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequestError(
            f"the request body must be a JSON object, not {_json_type_name(body)}"
        )
    return body


def resolve_model(request: web.Request, requested: str) -> Model:
    """The configured model ``requested`` names.

    Raises:
        ModelNotFoundError: no configured model or alias matches (the message lists them).
    """
    try:
        return request.app[SETTINGS].catalog.resolve(requested)
    except UnknownModelError as exc:
        raise ModelNotFoundError(str(exc), param="model") from None


def model_handler(endpoint: Endpoint) -> Handler:
    """The aiohttp handler of ``endpoint``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        app = request.app
        exchange = request[EXCHANGE]
        body = await read_json_object(request)
        requested = _model_name(body, endpoint.name_fields)
        exchange.requested_model = requested
        _check_fields(body, endpoint.fields)
        model = resolve_model(request, requested)
        exchange.model = model.tag
        if endpoint.kind is not None and model.kind is not endpoint.kind:
            raise _wrong_kind(requested, model, endpoint.kind)
        reason = app[STATE].unavailable_reason(model.tag)
        if reason is not None:
            raise ModelUnavailableError(reason, retry_after=_UNAVAILABLE_RETRY_AFTER)
        body[endpoint.name_fields[0]] = model.tag
        for other in endpoint.name_fields[1:]:
            body.pop(other, None)
        data = _serialise(body)

        upstream = app[UPSTREAM]
        if endpoint.stream_default is None:
            client_timeout = upstream.whole if endpoint.guarded else upstream.meta
        else:
            client_timeout = (
                upstream.stream if body.get("stream", endpoint.stream_default) else upstream.whole
            )
        if not endpoint.guarded:
            response = await upstream.send(
                "POST",
                endpoint.upstream_path,
                data=data,
                headers=JSON_HEADERS,
                client_timeout=client_timeout,
            )
            return await relay(request, response, exchange, client_timeout=client_timeout)
        async with app[GUARD]:
            response = await upstream.send(
                "POST",
                endpoint.upstream_path,
                data=data,
                headers=JSON_HEADERS,
                client_timeout=client_timeout,
            )
            return await relay(request, response, exchange, client_timeout=client_timeout)

    return handler


async def fetch_ollama_tags(app: web.Application) -> dict[str, dict[str, Any]]:
    """Ollama's ``/api/tags`` entries by :func:`name_key` (best effort: empty if Ollama is down)."""
    if app[STATE].ollama_status is not OllamaStatus.UP:
        return {}
    try:
        response = await app[UPSTREAM].send("GET", "/api/tags", client_timeout=_TAGS_TIMEOUT)
        async with response:
            if response.status != 200:
                return {}
            document = await response.json()
    except Exception:  # enrichment only: the listing works without it
        return {}
    entries = document.get("models") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return {}
    return {
        name_key(entry["name"]): entry
        for entry in entries
        if isinstance(entry, dict) and isinstance(entry.get("name"), str)
    }


def _serialise(body: dict[str, Any]) -> bytes:
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        # A lone surrogate (``"\ud800"``) is valid JSON but not UTF-8: keep it as an escape.
        return json.dumps(body, separators=(",", ":")).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _model_name(body: dict[str, Any], fields: tuple[str, ...]) -> str:
    for field in fields:
        value = body.get(field)
        if value is None:
            continue
        if not isinstance(value, str):
            raise BadRequestError(
                f"`{field}` must be a string naming a model, not {_json_type_name(value)}",
                param=field,
            )
        if value.strip():
            return value
    raise BadRequestError(
        "`model` is missing: name the model to use (see /v1/models or /api/tags)", param="model"
    )


def _check_fields(
    body: dict[str, Any], fields: tuple[tuple[str, tuple[type, ...], bool], ...]
) -> None:
    for name, types, required in fields:
        value = body.get(name)
        if value is None:
            if required:
                raise BadRequestError(f"`{name}` is required", param=name)
            continue
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            expected = " or ".join(dict.fromkeys(_JSON_TYPE_NAMES[t] for t in types))
            raise BadRequestError(
                f"`{name}` must be {expected}, not {_json_type_name(value)}", param=name
            )


def _wrong_kind(requested: str, model: Model, needed: ModelKind) -> WrongModelKindError:
    if needed is ModelKind.EMBEDDING:
        message = f"model {requested!r} is a chat model; it cannot create embeddings"
    else:
        message = f"model {requested!r} is an embedding model; it cannot generate text"
    return WrongModelKindError(f"{message} (the {model.kind} model {model.tag})", param="model")


def _json_type_name(value: object) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
