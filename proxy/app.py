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
from proxy.admission import META_CONCURRENCY, META_LANE, Admission, RateWindow
from proxy.appkeys import ADMISSION, KEYS, METRICS, RATES, SETTINGS, STATE, UPSTREAM
from proxy.config import Settings
from proxy.endpoints import ENDPOINTS
from proxy.keys import KeyRing, key_spec
from proxy.metrics import Metrics
from proxy.middlewares import auth_middleware, request_middleware
from proxy.runner import server_header
from proxy.state import InstanceState
from proxy.upstream import Upstream, upstream_context

__all__ = ["create_app", "key_ring"]

MANAGEMENT_CONNECTIONS = 8
"""Connections to Ollama left for the admin's model management (pulls may take long)."""


def key_ring(settings: Settings) -> KeyRing:
    """Every key of the proxy: ``PROXY_API_KEY`` (``default``), ``PROXY_ADMIN_KEY``
    (``admin``) and those of ``PROXY_KEYS``."""
    keys = list(settings.keys)
    if settings.proxy_api_key:
        keys.append(key_spec("default", settings.proxy_api_key))
    if settings.proxy_admin_key:
        keys.append(key_spec("admin", settings.proxy_admin_key, admin=True))
    return KeyRing(keys)


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
    keys = key_ring(settings)
    budgets = {model.tag: settings.budget(model) for model in settings.catalog}
    admission = Admission(
        {**budgets, META_LANE: META_CONCURRENCY},
        max_queue=settings.proxy_max_queue,
        weights={key.name: key.weight for key in keys.specs},
        key_caps={key.name: key.concurrency for key in keys.specs if key.concurrency},
    )
    rates = {
        key.name: RateWindow(key.requests_per_minute, key.tokens_per_minute)
        for key in keys.specs
        if key.requests_per_minute or key.tokens_per_minute
    }
    metrics.track_admission(admission)
    upstream = Upstream(
        settings.ollama_url,
        request_timeout=settings.proxy_request_timeout,
        # Every admitted request, plus a few for the admin's model management.
        connections=sum(budgets.values()) + META_CONCURRENCY + MANAGEMENT_CONNECTIONS,
    )

    middlewares = [request_middleware(metrics=metrics, max_body=settings.proxy_max_body)]
    if keys:
        open_paths = [endpoint.path for endpoint in ENDPOINTS if endpoint.open]
        middlewares.append(auth_middleware(keys, open_paths=open_paths))
    app = web.Application(
        client_max_size=settings.proxy_max_body,
        middlewares=middlewares,
        handler_args={"handler_cancellation": True, "access_log": None},
    )
    app[SETTINGS] = settings
    app[STATE] = state
    app[METRICS] = metrics
    app[UPSTREAM] = upstream
    app[ADMISSION] = admission
    app[KEYS] = keys
    app[RATES] = rates
    app.cleanup_ctx.append(upstream_context(upstream))
    app.on_response_prepare.append(server_header)
    routes.add_routes(app)
    return app
