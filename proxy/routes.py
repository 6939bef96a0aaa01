"""The handlers of :data:`~proxy.endpoints.ENDPOINTS`, generated from the table.

A model route parses the body once (:mod:`proxy.bodies`: strictly, as Ollama will), checks the
fields its endpoint declares and the operator's policy, resolves the model in the catalog,
checks its kind, rewrites ``model`` to the Ollama tag, serialises once and forwards; everything
after that is relayed as bytes. Inference takes a slot of the main guard; every other request
that reaches Ollama (model info, listings, ps, version) one of the small metadata guard, so no
route can open connections to Ollama without bound. The model listings of both APIs come from
one place (:func:`_listing`), enriched with Ollama's details when it is up.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from aiohttp import web

from proxy.admission import META_LANE
from proxy.appkeys import (
    ADMISSION,
    CALLER,
    EXCHANGE,
    KEYS,
    METRICS,
    RATES,
    SETTINGS,
    STATE,
    UPSTREAM,
)
from proxy.bodies import check_fields, model_name, police, read_json_object, serialise
from proxy.catalog import Model, ModelKind, UnknownModelError, name_key, strip_ubiops_prefix
from proxy.endpoints import ENDPOINTS, Api, Endpoint, Framing, Serves
from proxy.errors import (
    BadRequestError,
    ModelNotFoundError,
    ModelUnavailableError,
    PermissionDeniedError,
    WrongModelKindError,
)
from proxy.keys import ANONYMOUS, KeySpec
from proxy.metrics import CONTENT_TYPE
from proxy.relay import relay
from proxy.state import ModelState, OllamaStatus

__all__ = ["add_routes"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_JSON_HEADERS: Mapping[str, str] = {"Content-Type": "application/json"}
_FORWARDED_REQUEST_HEADERS = ("Content-Type", "Content-Length")
_UNAVAILABLE_RETRY_AFTER = 5
_ROOT_TEXT = "Ollama is running"
_ZERO_TIME = "0001-01-01T00:00:00Z"
_OWNER = "library"
_FRACTION = re.compile(r"(\.\d{6})\d+")
ANONYMOUS_READINESS = ("status", "ready", "gave_up")
"""What ``/readyz`` tells a caller without a key."""


def add_routes(app: web.Application) -> None:
    """Register a handler for every endpoint of the table on ``app``."""
    for endpoint in ENDPOINTS:
        handler = _HANDLERS[endpoint.serves](endpoint)
        if endpoint.method == "GET":
            app.router.add_get(endpoint.path, handler)  # HEAD too, as Ollama answers it
        else:
            app.router.add_route(endpoint.method, endpoint.path, handler)


# -- model routes -------------------------------------------------------------------------------


def _model_route(endpoint: Endpoint) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        app = request.app
        exchange = request[EXCHANGE]
        settings = app[SETTINGS]
        caller = request.get(CALLER, ANONYMOUS)
        if not caller.allows_api(endpoint.api.value):
            raise _out_of_scope(caller, f"the {endpoint.api.value} API")
        body = await read_json_object(request)
        catalog = settings.catalog
        requested = model_name(body, endpoint.name_fields, catalog.names)
        exchange.requested_model = requested
        check_fields(body, endpoint.fields)
        police(body, endpoint, settings, admin=caller.admin)
        model = _resolve(request, requested)
        exchange.model = model.tag
        if not caller.allows_model(model, catalog.names_of(model)):
            raise _out_of_scope(caller, f"model {requested!r}")
        if endpoint.kind is not None and model.kind is not endpoint.kind:
            raise _wrong_kind(requested, endpoint.kind, catalog.names_of_kind(endpoint.kind))
        if endpoint.kind is ModelKind.EMBEDDING and "dimensions" in body:
            _check_dimensions(body["dimensions"], requested, app[STATE].models[model.tag])
        reason = app[STATE].unavailable_reason(model.tag)
        if reason is not None:
            raise ModelUnavailableError(reason, retry_after=_UNAVAILABLE_RETRY_AFTER)
        body[endpoint.name_fields[0]] = model.tag
        for other in endpoint.name_fields[1:]:
            body.pop(other, None)
        hide_usage = _ask_for_usage(body, endpoint)

        upstream = app[UPSTREAM]
        if endpoint.stream_default is None:
            timeout = upstream.whole if endpoint.guarded else upstream.meta
        elif body.get("stream", endpoint.stream_default):
            timeout = upstream.stream
        else:
            timeout = upstream.whole
        window = app[RATES].get(caller.name)
        if window is not None:
            window.admit(caller.name)
        lane = model.tag if endpoint.guarded else META_LANE
        async with app[ADMISSION].slot(lane, caller.name) as waited:
            exchange.queue_wait = waited
            response = await upstream.send(
                "POST",
                endpoint.path,
                data=serialise(body),
                headers=_JSON_HEADERS,
                client_timeout=timeout,
            )
            return await relay(
                request,
                response,
                exchange,
                client_timeout=timeout,
                events=endpoint.events,
                count_usage=True,
                hide_usage=hide_usage,
                rename=_echo(model.tag, requested),
            )

    return handler


def _echo(tag: str, requested: str) -> tuple[bytes, bytes] | None:
    """The answer's ``"model"`` as the client named it, as Ollama and OpenAI answer (the proxy
    sent Ollama the tag)."""
    if requested == tag:
        return None
    return b'"model":' + json.dumps(tag).encode(), b'"model":' + json.dumps(requested).encode()


def _ask_for_usage(body: dict[str, Any], endpoint: Endpoint) -> bool:
    """Make an OpenAI chat or completion stream report its token usage; whether the client had
    not asked for it (the relay then takes the usage chunk out again)."""
    if endpoint.events is not Framing.SSE or endpoint.api is not Api.OPENAI:
        return False
    if not body.get("stream"):
        return False
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return False
    body["stream_options"] = {
        **(options if isinstance(options, dict) else {}),
        "include_usage": True,
    }
    return True


def _resolve(request: web.Request, requested: str) -> Model:
    try:
        return request.app[SETTINGS].catalog.resolve(requested)
    except UnknownModelError as exc:
        raise ModelNotFoundError(str(exc), param="model") from None


def _check_dimensions(dimensions: object, requested: str, model: ModelState) -> None:
    """Refuse ``dimensions`` a model cannot honour (it can only truncate its embeddings)."""
    size = model.dimensions
    if (
        isinstance(dimensions, int)
        and not isinstance(dimensions, bool)
        and 1 <= dimensions <= (size or dimensions)
    ):
        return
    most = f"from 1 to {size}" if size is not None else "of at least 1"
    raise BadRequestError(
        f"`dimensions` must be a whole number {most} for {requested!r}: it can shorten its "
        f"embeddings{f' of {size}' if size is not None else ''}, not lengthen them",
        param="dimensions",
    )


def _out_of_scope(caller: KeySpec, what: str) -> PermissionDeniedError:
    return PermissionDeniedError(
        f"key {caller.name!r} may not use {what}; it may use {caller.scope()}"
    )


def _wrong_kind(requested: str, needed: ModelKind, others: tuple[str, ...]) -> WrongModelKindError:
    if needed is ModelKind.EMBEDDING:
        message = f"model {requested!r} is a chat model; it cannot create embeddings"
    else:
        message = f"model {requested!r} is an embedding model; it cannot generate text"
    return WrongModelKindError(
        f"{message}; the {needed} models here: {', '.join(others) or 'none'}", param="model"
    )


# -- model listings -----------------------------------------------------------------------------


def _model_list(endpoint: Endpoint) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        listing = await _listing(request)
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
        caller = request.get(CALLER, ANONYMOUS)
        if not caller.allows_model(model, request.app[SETTINGS].catalog.names_of(model)):
            raise _out_of_scope(caller, f"model {requested!r}")
        entries = await _ollama_tags(request)
        name = strip_ubiops_prefix(requested)
        return web.json_response(_openai_model(name, entries.get(name_key(model.tag))))

    return handler


async def _listing(request: web.Request) -> list[tuple[str, dict[str, Any] | None]]:
    """Every name of the catalog the caller may use (models by tag, then aliases) with
    Ollama's entry, if known."""
    catalog = request.app[SETTINGS].catalog
    caller = request.get(CALLER, ANONYMOUS)
    entries = await _ollama_tags(request)
    return [
        (name, entries.get(name_key(model.tag)))
        for name, model in catalog.listing()
        if caller.allows_model(model, catalog.names_of(model))
    ]


async def _ollama_tags(request: web.Request) -> dict[str, dict[str, Any]]:
    """Ollama's ``/api/tags`` entries by :func:`name_key` (best effort: empty if Ollama is down)."""
    return {name_key(entry["name"]): entry for entry in await _ollama_models(request, "/api/tags")}


async def _ollama_models(request: web.Request, path: str) -> list[dict[str, Any]]:
    """The ``models`` Ollama lists at ``path`` (tags, ps), each with a name; best effort: empty
    when Ollama is down or answers otherwise (these only enrich an answer)."""
    app = request.app
    if app[STATE].ollama_status is not OllamaStatus.UP:
        return []
    upstream = app[UPSTREAM]
    try:
        async with app[ADMISSION].slot(META_LANE, request.get(CALLER, ANONYMOUS).name):
            response = await upstream.send("GET", path, client_timeout=upstream.brief)
            async with response:
                document = await response.json() if response.status == 200 else None
    except Exception:  # enrichment only: the answer works without it
        return []
    entries = document.get("models") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)]


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
        async with request.app[ADMISSION].slot(META_LANE, request.get(CALLER, ANONYMOUS).name):
            response = await upstream.send(
                request.method, endpoint.path, client_timeout=upstream.meta
            )
            return await relay(request, response, request[EXCHANGE], client_timeout=upstream.meta)

    return handler


def _management(_endpoint: Endpoint) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        if not request.app[SETTINGS].proxy_admin_key:
            raise PermissionDeniedError(
                f"{request.path} is disabled: model management needs PROXY_ADMIN_KEY to be set"
            )
        if not request.get(CALLER, ANONYMOUS).admin:
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


def _refused(_endpoint: Endpoint) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise PermissionDeniedError(
            f"{request.path} is an ollama.com account or cloud feature; this server does not "
            "offer it (nothing was forwarded)"
        )

    return handler


def _fixed(answer: Callable[[web.Application], web.Response]) -> Callable[[Endpoint], Handler]:
    def make(_endpoint: Endpoint) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return answer(request.app)

        return handler

    return make


def _readiness(_endpoint: Endpoint) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        """The readiness document; its reasons and details only for a caller with a key
        (anonymous probes learn whether it serves, not which models fail and why)."""
        readiness = request.app[STATE].readiness()
        document = readiness.as_json()
        if request.app[KEYS] and CALLER not in request:
            document = {key: document[key] for key in ANONYMOUS_READINESS}
        return web.json_response(document, status=200 if readiness.serving else 503)

    return handler


async def _metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus metrics; which models Ollama has loaded is asked at each scrape."""
    metrics = request.app[METRICS]
    metrics.set_loaded(await _loaded_models(request))
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})


async def _loaded_models(request: web.Request) -> set[str]:
    """The tags of the configured models Ollama has in memory (best effort: none if down)."""
    loaded = {name_key(entry["name"]) for entry in await _ollama_models(request, "/api/ps")}
    return {m.tag for m in request.app[SETTINGS].catalog if name_key(m.tag) in loaded}


_HANDLERS: Mapping[Serves, Callable[[Endpoint], Handler]] = {
    Serves.INFERENCE: _model_route,
    Serves.MODEL_INFO: _model_route,
    Serves.MODEL_LIST: _model_list,
    Serves.MODEL_GET: _model_get,
    Serves.PASSTHROUGH: _passthrough,
    Serves.MANAGEMENT: _management,
    Serves.REFUSED: _refused,
    Serves.ROOT: _fixed(lambda _app: web.Response(text=_ROOT_TEXT)),
    Serves.HEALTH: _fixed(lambda _app: web.json_response({"status": "alive"})),
    Serves.READINESS: _readiness,
    Serves.METRICS: lambda _endpoint: _metrics,
}
