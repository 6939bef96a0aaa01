"""The native Ollama routes (``/api``, ``/``) and the admin-only management routes.

Inference and ``/api/show`` go through the catalog like ``/v1``. ``/api/tags`` lists the catalog
in Ollama's shape (details from Ollama when it is up); ``/api/ps`` and ``/api/version`` are passed
through. Management routes (pull, push, delete, create, copy, blobs) answer 403 unless the request
carries ``PROXY_ADMIN_KEY``; with it they are forwarded untouched, bodies streamed both ways.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.appkeys import EXCHANGE, SETTINGS, UPSTREAM
from proxy.catalog import ModelKind, name_key
from proxy.errors import PermissionDeniedError
from proxy.middlewares import token_matches
from proxy.relay import relay
from proxy.routing import Endpoint, Handler, fetch_ollama_tags, model_handler

__all__ = ["CHAT", "EMBED", "EMBEDDINGS", "GENERATE", "MANAGEMENT_PATHS", "SHOW", "add_routes"]

_STREAM = ("stream", (bool,), False)

CHAT = Endpoint(
    "/api/chat", ModelKind.CHAT, stream_default=True, fields=(("messages", (list,), False), _STREAM)
)
GENERATE = Endpoint(
    "/api/generate",
    ModelKind.CHAT,
    stream_default=True,
    fields=(("prompt", (str,), False), _STREAM),
)
EMBED = Endpoint(
    "/api/embed", ModelKind.EMBEDDING, stream_default=None, fields=(("input", (str, list), False),)
)
EMBEDDINGS = Endpoint(
    "/api/embeddings", ModelKind.EMBEDDING, stream_default=None, fields=(("prompt", (str,), False),)
)
SHOW = Endpoint(
    "/api/show", None, stream_default=None, guarded=False, name_fields=("model", "name")
)

MANAGEMENT_PATHS = (
    "/api/pull",
    "/api/push",
    "/api/delete",
    "/api/create",
    "/api/copy",
    "/api/blobs/{digest}",
)
"""Routes that change Ollama's model store: admin key only."""

_ROOT_TEXT = "Ollama is running"
_ZERO_TIME = "0001-01-01T00:00:00Z"
_FORWARDED_REQUEST_HEADERS = ("Content-Type", "Content-Length")


def add_routes(app: web.Application) -> None:
    """Register the native routes and the management routes on ``app``."""
    router = app.router
    router.add_get("/", root)
    router.add_post("/api/chat", model_handler(CHAT))
    router.add_post("/api/generate", model_handler(GENERATE))
    router.add_post("/api/embed", model_handler(EMBED))
    router.add_post("/api/embeddings", model_handler(EMBEDDINGS))
    router.add_post("/api/show", model_handler(SHOW))
    router.add_get("/api/tags", tags)
    router.add_get("/api/ps", _passthrough("/api/ps"))
    router.add_get("/api/version", _passthrough("/api/version"))
    for path in MANAGEMENT_PATHS:
        router.add_route("*", path, management)


async def root(_request: web.Request) -> web.Response:
    """``GET|HEAD /``: what Ollama answers, so liveness checks written for Ollama work."""
    return web.Response(text=_ROOT_TEXT)


async def tags(request: web.Request) -> web.Response:
    """``GET /api/tags``: every configured model and alias, with Ollama's details when known."""
    catalog = request.app[SETTINGS].catalog
    known = await fetch_ollama_tags(request.app)
    models = [_tag_entry(model.tag, known.get(name_key(model.tag))) for model in catalog]
    for alias, target in catalog.aliases:
        models.append(_tag_entry(alias, known.get(name_key(target))))
    return web.json_response({"models": models})


async def management(request: web.Request) -> web.StreamResponse:
    """Forward a management request untouched, but only with the admin key."""
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


def _passthrough(path: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        upstream = request.app[UPSTREAM]
        response = await upstream.send(request.method, path, client_timeout=upstream.meta)
        return await relay(request, response, request[EXCHANGE], client_timeout=upstream.meta)

    return handler


def _tag_entry(name: str, entry: dict[str, Any] | None) -> dict[str, Any]:
    if entry is None:
        return {
            "name": name,
            "model": name,
            "modified_at": _ZERO_TIME,
            "size": 0,
            "digest": "",
            "details": {},
        }
    return {**entry, "name": name, "model": name}
