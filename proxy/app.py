"""The aiohttp application: the public face of an instance.

This is a skeleton: ``/healthz`` and ``/readyz`` only. The full proxy (routes, relay, auth,
limits, metrics) is built on top of it.
"""

from __future__ import annotations

from aiohttp import web

from proxy.config import Settings
from proxy.state import InstanceState

__all__ = ["SETTINGS", "STATE", "create_app"]

SETTINGS = web.AppKey("settings", Settings)
STATE = web.AppKey("state", InstanceState)


def create_app(settings: Settings, state: InstanceState) -> web.Application:
    """Build the application around an existing readiness ``state``."""
    app = web.Application(client_max_size=settings.proxy_max_body)
    app[SETTINGS] = settings
    app[STATE] = state
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def _readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(state.snapshot(), status=200 if state.is_ready else 503)
