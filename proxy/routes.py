"""The handlers of :data:`~proxy.endpoints.ENDPOINTS`, generated from the table.

A model route parses the body once (``json.loads``), checks the fields its endpoint declares,
resolves the model in the catalog, checks its kind, rewrites ``model`` to the Ollama tag,
serialises once and forwards; everything after that is relayed as bytes. The model listings of
both APIs come from one place (:func:`_listing`), enriched with Ollama's details when it is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from aiohttp import web

from proxy.appkeys import EXCHANGE, GUARD, METRICS, SETTINGS, STATE, UPSTREAM
from proxy.catalog import Model, ModelKind, UnknownModelError, name_key, strip_ubiops_prefix
from proxy.endpoints import ENDPOINTS, Api, Endpoint, Field, Serves
from proxy.errors import (
    BadRequestError,
    ModelNotFoundError,
    ModelUnavailableError,
    PermissionDeniedError,
    RequestTimeoutError,
    WrongModelKindError,
)
from proxy.metrics import CONTENT_TYPE
from proxy.middlewares import token_matches
from proxy.relay import relay
from proxy.state import OllamaStatus

__all__ = ["add_routes", "read_json_object"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_JSON_HEADERS: Mapping[str, str] = {"Content-Type": "application/json"}
_FORWARDED_REQUEST_HEADERS = ("Content-Type", "Content-Length")
_UNAVAILABLE_RETRY_AFTER = 5
_ROOT_TEXT = "Ollama is running"
_ZERO_TIME = "0001-01-01T00:00:00Z"
_OWNER = "library"
_FRACTION = re.compile(r"(\.\d{6})\d+")
_JSON_TYPE_NAMES = {
    str: "a string",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    int: "a number",
    float: "a number",
    type(None): "null",
}


def add_routes(app: web.Application) -> None:
    """Register a handler for every endpoint of the table on ``app``."""
    for endpoint in ENDPOINTS:
        handler = _HANDLERS[endpoint.serves](endpoint)
        if endpoint.method == "GET":
            app.router.add_get(endpoint.path, handler)  # HEAD too, as Ollama answers it
        else:
            app.router.add_route(endpoint.method, endpoint.path, handler)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object.

    Raises:
        RequestTimeoutError: the body did not arrive within ``PROXY_CLIENT_TIMEOUT``.
        BadRequestError: empty body, not UTF-8, invalid JSON, or JSON that is not an object.
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
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise BadRequestError(
            f"the request body is not valid UTF-8 (at byte {exc.start}); send UTF-8 JSON"
        ) from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise BadRequestError(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequestError("the request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequestError(
            f"the request body must be a JSON object, not {_json_type_name(body)}"
        )
    return body


# -- model routes -------------------------------------------------------------------------------


def _model_route(endpoint: Endpoint) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        app = request.app
        exchange = request[EXCHANGE]
        body = await read_json_object(request)
        catalog = app[SETTINGS].catalog
        requested = _model_name(body, endpoint.name_fields, catalog.names)
        exchange.requested_model = requested
        _check_fields(body, endpoint.fields)
        model = _resolve(request, requested)
        exchange.model = model.tag
        if endpoint.kind is not None and model.kind is not endpoint.kind:
            raise _wrong_kind(requested, endpoint.kind, catalog.names_of_kind(endpoint.kind))
        reason = app[STATE].unavailable_reason(model.tag)
        if reason is not None:
            raise ModelUnavailableError(reason, retry_after=_UNAVAILABLE_RETRY_AFTER)
        body[endpoint.name_fields[0]] = model.tag
        for other in endpoint.name_fields[1:]:
            body.pop(other, None)

        upstream = app[UPSTREAM]
        if endpoint.stream_default is None:
            timeout = upstream.whole if endpoint.guarded else upstream.meta
        elif body.get("stream", endpoint.stream_default):
            timeout = upstream.stream
        else:
            timeout = upstream.whole
        slot = app[GUARD] if endpoint.guarded else contextlib.nullcontext()
        async with slot:
            response = await upstream.send(
                "POST",
                endpoint.path,
                data=_serialise(body),
                headers=_JSON_HEADERS,
                client_timeout=timeout,
            )
            return await relay(request, response, exchange, client_timeout=timeout)

    return handler


def _resolve(request: web.Request, requested: str) -> Model:
    try:
        return request.app[SETTINGS].catalog.resolve(requested)
    except UnknownModelError as exc:
        raise ModelNotFoundError(str(exc), param="model") from None


def _model_name(body: dict[str, Any], fields: tuple[str, ...], names: tuple[str, ...]) -> str:
    for name in fields:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise BadRequestError(
                f"`{name}` must be a string naming a model, not {_json_type_name(value)}",
                param=name,
            )
        if value.strip():
            return value
    served = ", ".join(names) or "none are configured"
    raise BadRequestError(f"`model` is missing: name one of the models: {served}", param="model")


def _check_fields(body: dict[str, Any], fields: tuple[Field, ...]) -> None:
    for field in fields:
        value = body.get(field.name)
        if value is None:
            if field.required:
                raise BadRequestError(f"`{field.name}` is required", param=field.name)
            continue
        types = field.types
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            expected = " or ".join(dict.fromkeys(_JSON_TYPE_NAMES[t] for t in types))
            raise BadRequestError(
                f"`{field.name}` must be {expected}, not {_json_type_name(value)}",
                param=field.name,
            )


def _wrong_kind(requested: str, needed: ModelKind, others: tuple[str, ...]) -> WrongModelKindError:
    if needed is ModelKind.EMBEDDING:
        message = f"model {requested!r} is a chat model; it cannot create embeddings"
    else:
        message = f"model {requested!r} is an embedding model; it cannot generate text"
    return WrongModelKindError(
        f"{message}; the {needed} models here: {', '.join(others) or 'none'}", param="model"
    )


def _serialise(body: dict[str, Any]) -> bytes:
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        # A lone surrogate (``"\ud800"``) is valid JSON but not UTF-8: keep it as an escape.
        return json.dumps(body, separators=(",", ":")).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _json_type_name(value: object) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


# -- model listings -----------------------------------------------------------------------------


def _model_list(endpoint: Endpoint) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        listing = await _listing(request.app)
        if endpoint.api is Api.OPENAI:
            data = [_openai_model(name, entry) for name, entry in listing]
            return web.json_response({"object": "list", "data": data})
        return web.json_response({"models": [_ollama_model(n, e) for n, e in listing]})

    return handler


def _model_get(_endpoint: Endpoint) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        requested = request.match_info["model"]
        request[EXCHANGE].requested_model = requested
        model = _resolve(request, requested)
        request[EXCHANGE].model = model.tag
        entries = await _ollama_tags(request.app)
        name = strip_ubiops_prefix(requested)
        return web.json_response(_openai_model(name, entries.get(name_key(model.tag))))

    return handler


async def _listing(app: web.Application) -> list[tuple[str, dict[str, Any] | None]]:
    """Every name of the catalog (models by tag, then aliases) with Ollama's entry, if known."""
    catalog = app[SETTINGS].catalog
    entries = await _ollama_tags(app)
    names = [(model.tag, model.tag) for model in catalog]
    names += list(catalog.aliases)
    return [(name, entries.get(name_key(target))) for name, target in names]


async def _ollama_tags(app: web.Application) -> dict[str, dict[str, Any]]:
    """Ollama's ``/api/tags`` entries by :func:`name_key` (best effort: empty if Ollama is down)."""
    if app[STATE].ollama_status is not OllamaStatus.UP:
        return {}
    upstream = app[UPSTREAM]
    try:
        response = await upstream.send("GET", "/api/tags", client_timeout=upstream.brief)
        async with response:
            document = await response.json() if response.status == 200 else None
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


def _openai_model(model_id: str, entry: dict[str, Any] | None) -> dict[str, Any]:
    created = _unix_time(entry.get("modified_at")) if entry else 0
    return {"id": model_id, "object": "model", "created": created, "owned_by": _OWNER}


def _ollama_model(name: str, entry: dict[str, Any] | None) -> dict[str, Any]:
    if entry is None:
        entry = {"modified_at": _ZERO_TIME, "size": 0, "digest": "", "details": {}}
    return {**entry, "name": name, "model": name}


def _unix_time(value: object) -> int:
    """Seconds since the epoch of an RFC 3339 time (Go's nanoseconds cut to micro); 0 if bad."""
    if not isinstance(value, str):
        return 0
    try:
        text = _FRACTION.sub(r"\1", value.replace("Z", "+00:00"))
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        return 0


# -- everything else ----------------------------------------------------------------------------


def _passthrough(endpoint: Endpoint) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        upstream = request.app[UPSTREAM]
        response = await upstream.send(request.method, endpoint.path, client_timeout=upstream.meta)
        return await relay(request, response, request[EXCHANGE], client_timeout=upstream.meta)

    return handler


def _management(_endpoint: Endpoint) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        admin_key = request.app[SETTINGS].proxy_admin_key
        if not admin_key:
            raise PermissionDeniedError(
                f"{request.path} is disabled: model management needs PROXY_ADMIN_KEY to be set"
            )
        if not token_matches(request, admin_key):
            raise PermissionDeniedError(f"{request.path} requires the admin key (PROXY_ADMIN_KEY)")
        upstream = request.app[UPSTREAM]
        headers = {h: v for h in _FORWARDED_REQUEST_HEADERS if (v := request.headers.get(h))}
        response = await upstream.send(
            request.method,
            request.path,
            data=request.content if request.body_exists else None,
            headers=headers,
            params=request.query,
            client_timeout=upstream.unbounded,
        )
        return await relay(
            request, response, request[EXCHANGE], client_timeout=upstream.unbounded, check_end=False
        )

    return handler


def _fixed(answer: Callable[[web.Application], web.Response]) -> Callable[[Endpoint], Handler]:
    def make(_endpoint: Endpoint) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return answer(request.app)

        return handler

    return make


def _readiness(app: web.Application) -> web.Response:
    readiness = app[STATE].readiness()
    return web.json_response(readiness.as_json(), status=200 if readiness.serving else 503)


_HANDLERS: Mapping[Serves, Callable[[Endpoint], Handler]] = {
    Serves.INFERENCE: _model_route,
    Serves.MODEL_INFO: _model_route,
    Serves.MODEL_LIST: _model_list,
    Serves.MODEL_GET: _model_get,
    Serves.PASSTHROUGH: _passthrough,
    Serves.MANAGEMENT: _management,
    Serves.ROOT: _fixed(lambda _app: web.Response(text=_ROOT_TEXT)),
    Serves.HEALTH: _fixed(lambda _app: web.json_response({"status": "alive"})),
    Serves.READINESS: _fixed(_readiness),
    Serves.METRICS: _fixed(
        lambda app: web.Response(body=app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE})
    ),
}
