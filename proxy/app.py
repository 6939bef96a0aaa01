"""The aiohttp application: the public face of an instance.

Its routes are the table in :mod:`proxy.endpoints` (handlers in :mod:`proxy.routes`). The
application sets two server options of its own through ``handler_args`` (they win over the
runner's): ``handler_cancellation=True``, so a client that disconnects cancels its handler and with
it the upstream request, and ``access_log=None``, because the request middleware writes one
structured access-log event per request instead.
"""

from __future__ import annotations

from aiohttp import web

from proxy import routes
from proxy.appkeys import GUARD, META_GUARD, METRICS, SETTINGS, STATE, UPSTREAM
from proxy.config import Settings
from proxy.endpoints import ENDPOINTS
from proxy.limits import ConcurrencyGuard
from proxy.metrics import Metrics
from proxy.middlewares import auth_middleware, request_middleware
from proxy.runner import server_header
from proxy.state import InstanceState
from proxy.upstream import Upstream, upstream_context

__all__ = ["META_CONCURRENCY", "create_app"]

META_CONCURRENCY = 8
"""Requests for model info, listings, ps and version forwarded to Ollama at once."""

MANAGEMENT_CONNECTIONS = 8
"""Connections to Ollama left for the admin's model management (pulls may take long)."""


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
    meta_guard = ConcurrencyGuard(META_CONCURRENCY, settings.proxy_max_queue)
    metrics.track_load(lambda: guard.active, lambda: guard.queued)
    upstream = Upstream(
        settings.ollama_url,
        request_timeout=settings.proxy_request_timeout,
        # Every guarded request, plus a few for the admin's model management.
        connections=settings.proxy_max_concurrency + META_CONCURRENCY + MANAGEMENT_CONNECTIONS,
    )

    middlewares = [request_middleware(metrics=metrics, max_body=settings.proxy_max_body)]
    if settings.proxy_api_key:
        middlewares.append(
            auth_middleware(
                api_key=settings.proxy_api_key,
                admin_key=settings.proxy_admin_key,
                open_paths=[endpoint.path for endpoint in ENDPOINTS if endpoint.open],
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
    app[META_GUARD] = meta_guard
    app.cleanup_ctx.append(upstream_context(upstream))
    app.on_response_prepare.append(server_header)
    routes.add_routes(app)
    return app
