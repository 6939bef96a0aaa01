"""Typed keys of the application and request state (one module, so routes avoid import cycles)."""

from __future__ import annotations

from aiohttp import web

from proxy.access_log import Exchange
from proxy.config import Settings
from proxy.limits import ConcurrencyGuard
from proxy.metrics import Metrics
from proxy.state import InstanceState
from proxy.upstream import Upstream

__all__ = ["EXCHANGE", "GUARD", "META_GUARD", "METRICS", "SETTINGS", "STATE", "UPSTREAM"]

SETTINGS = web.AppKey("settings", Settings)
STATE = web.AppKey("state", InstanceState)
METRICS = web.AppKey("metrics", Metrics)
UPSTREAM = web.AppKey("upstream", Upstream)
GUARD = web.AppKey("guard", ConcurrencyGuard)
"""Admission of inference requests."""
META_GUARD = web.AppKey("meta_guard", ConcurrencyGuard)
"""Admission of the other requests that reach Ollama (model info, listings, ps, version)."""
EXCHANGE = web.RequestKey("exchange", Exchange)
