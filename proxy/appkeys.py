"""Typed keys of the application and request state (one module, so routes avoid import cycles)."""

from __future__ import annotations

from aiohttp import web

from proxy.access_log import Exchange
from proxy.admission import Admission, RateWindow
from proxy.config import Settings
from proxy.keys import KeyRing, KeySpec
from proxy.metrics import Metrics
from proxy.state import InstanceState
from proxy.upstream import Upstream

__all__ = [
    "ADMISSION",
    "CALLER",
    "EXCHANGE",
    "KEYS",
    "METRICS",
    "RATES",
    "SETTINGS",
    "STATE",
    "UPSTREAM",
]

SETTINGS = web.AppKey("settings", Settings)
STATE = web.AppKey("state", InstanceState)
METRICS = web.AppKey("metrics", Metrics)
UPSTREAM = web.AppKey("upstream", Upstream)
ADMISSION = web.AppKey("admission", Admission)
"""Who may send a request to Ollama now: a lane per model, and one for metadata."""
KEYS = web.AppKey("keys", KeyRing)
RATES = web.AppKey("rates", dict[str, RateWindow])
"""The per-minute windows of the keys that have limits, by key name."""
EXCHANGE = web.RequestKey("exchange", Exchange)
CALLER = web.RequestKey("caller", KeySpec)
"""The key a request presented (absent when the proxy has no keys: anyone on loopback)."""
