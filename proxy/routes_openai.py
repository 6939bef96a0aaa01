"""The OpenAI-compatible routes (``/v1``): chat, completions, embeddings and the model list.

Inference is forwarded to Ollama's own ``/v1`` layer with the model rewritten to its tag; the
model list is the catalog (models and aliases) in OpenAI's shape, enriched with Ollama's
modification times when Ollama is up.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from aiohttp import web

from proxy.appkeys import EXCHANGE, SETTINGS
from proxy.catalog import ModelKind, name_key, strip_ubiops_prefix
from proxy.routing import Endpoint, fetch_ollama_tags, model_handler, resolve_model

__all__ = ["CHAT_COMPLETIONS", "COMPLETIONS", "EMBEDDINGS", "add_routes"]

_STREAM = ("stream", (bool,), False)

CHAT_COMPLETIONS = Endpoint(
    "/v1/chat/completions",
    ModelKind.CHAT,
    stream_default=False,
    fields=(("messages", (list,), True), _STREAM),
)
COMPLETIONS = Endpoint(
    "/v1/completions",
    ModelKind.CHAT,
    stream_default=False,
    fields=(("prompt", (str,), True), _STREAM),
)
EMBEDDINGS = Endpoint(
    "/v1/embeddings",
    ModelKind.EMBEDDING,
    stream_default=None,
    fields=(("input", (str, list), True),),
)

_OWNER = "library"
_FRACTION = re.compile(r"(\.\d{6})\d+")


def add_routes(app: web.Application) -> None:
    """Register the ``/v1`` routes on ``app``."""
    app.router.add_post("/v1/chat/completions", model_handler(CHAT_COMPLETIONS))
    app.router.add_post("/v1/completions", model_handler(COMPLETIONS))
    app.router.add_post("/v1/embeddings", model_handler(EMBEDDINGS))
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", retrieve_model)


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``: every configured model (by its Ollama tag) and alias."""
    catalog = request.app[SETTINGS].catalog
    tags = await fetch_ollama_tags(request.app)
    data = [_model_object(model.tag, tags.get(name_key(model.tag))) for model in catalog]
    for alias, target in catalog.aliases:
        data.append(_model_object(alias, tags.get(name_key(target))))
    return web.json_response({"object": "list", "data": data})


async def retrieve_model(request: web.Request) -> web.Response:
    """``GET /v1/models/{model}``: one model; 404 naming the available ones if unknown."""
    requested = request.match_info["model"]
    request[EXCHANGE].requested_model = requested
    model = resolve_model(request, requested)
    request[EXCHANGE].model = model.tag
    tags = await fetch_ollama_tags(request.app)
    return web.json_response(
        _model_object(strip_ubiops_prefix(requested), tags.get(name_key(model.tag)))
    )


def _model_object(model_id: str, entry: dict[str, Any] | None) -> dict[str, Any]:
    created = _unix_time(entry.get("modified_at")) if entry else 0
    return {"id": model_id, "object": "model", "created": created, "owned_by": _OWNER}


def _unix_time(value: object) -> int:
    """Seconds since the epoch of an RFC 3339 time (Go's nanoseconds cut to micro); 0 if bad."""
    if not isinstance(value, str):
        return 0
    try:
        return int(
            datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00"))).timestamp()
        )
    except ValueError:
        return 0
