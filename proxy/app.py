"""The aiohttp application: the public face of an instance.

Routes:

* OpenAI: ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``;
  ``GET /v1/models``, ``/v1/models/{model}``.
* Ollama: ``POST /api/chat``, ``/api/generate``, ``/api/embed``, ``/api/embeddings``,
  ``/api/show``; ``GET /api/tags``, ``/api/ps``, ``/api/version``; ``GET|HEAD /``.
* Management (admin key only): ``/api/pull``, ``/api/push``, ``/api/delete``, ``/api/create``,
  ``/api/copy``, ``/api/blobs/{digest}``.
* Operations: ``/healthz`` (liveness), ``/readyz`` (readiness), ``/metrics`` (Prometheus).

The application sets two server options of its own through ``handler_args`` (they win over the
runner's): ``handler_cancellation=True``, so a client that disconnects cancels its handler and with
it the upstream request, and ``access_log=None``, because the request middleware writes one
structured access-log event per request instead.
"""

from __future__ import annotations

from aiohttp import web

from proxy import routes_ollama, routes_openai
from proxy.appkeys import EXCHANGE, GUARD, METRICS, SETTINGS, STATE, UPSTREAM
from proxy.config import Settings
from proxy.limits import ConcurrencyGuard
from proxy.metrics import CONTENT_TYPE, Metrics
from proxy.middlewares import auth_middleware, request_middleware
from proxy.state import InstanceState
from proxy.upstream import Upstream, upstream_context

__all__ = [
    "EXCHANGE",
    "GUARD",
    "METRICS",
    "OPEN_PATHS",
    "SETTINGS",
    "STATE",
    "UPSTREAM",
    "create_app",
]

OPEN_PATHS = ("/healthz", "/readyz")
"""Paths served without an API key (orchestrator probes)."""


def create_app(
    settings: Settings, state: InstanceState, *, metrics: Metrics | None = None
) -> web.Application:
    """Build the application around an existing readiness ``state``.

    Args:
        settings: the proxy's settings.
        state: the readiness state the supervisor and pulls update.
        metrics: the metrics to record into; a new :class:`Metrics` over ``state`` by default.
            Pass one to share it with the supervisor (pull durations), or read ``app[METRICS]``.

    The upstream client session opens in ``app.cleanup_ctx`` (before the first request) and
    closes after the server has drained; append the supervisor's context after it.
    """
    metrics = metrics if metrics is not None else Metrics(state)
    guard = ConcurrencyGuard(settings.proxy_max_concurrency, settings.proxy_max_queue)
    metrics.track_load(lambda: guard.active, lambda: guard.queued)
    upstream = Upstream(settings.ollama_url, request_timeout=settings.proxy_request_timeout)

    middlewares = [request_middleware(metrics=metrics, max_body=settings.proxy_max_body)]
    if settings.proxy_api_key:
        middlewares.append(
            auth_middleware(
                api_key=settings.proxy_api_key,
                admin_key=settings.proxy_admin_key,
                open_paths=OPEN_PATHS,
            )
        )
    app = web.Application(
        client_max_size=settings.proxy_max_body,
        middlewares=middlewares,
        handler_args={"handler_cancellation": True, "access_log": None},
    )
    app[SETTINGS] = settings
    app[STATE] = state
    app[METRICS] = metrics
    app[UPSTREAM] = upstream
    app[GUARD] = guard
    app.cleanup_ctx.append(upstream_context(upstream))

    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    routes_openai.add_routes(app)
    routes_ollama.add_routes(app)
    return app


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def _readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(state.snapshot(), status=200 if state.is_ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE})
