"""One structured access-log event per request, built from a per-request :class:`Exchange`."""

from __future__ import annotations

import time

from proxy.logs import get_logger
from proxy.usage import Usage

__all__ = ["Exchange", "log_exchange"]

_log = get_logger("proxy.access")
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
_MAX_LOGGED_NAME = 256


class Exchange:
    """What the proxy learns about one request while serving it.

    The request middleware creates it and names the key; handlers fill in the model and the
    time it waited for a slot; the relay fills in the chunk counts, whether the answer's status
    was sent (``committed``), the time of a stream's first chunk and the token usage. Plain
    attributes, no per-chunk work beyond counting.
    """

    __slots__ = (
        "bytes",
        "chunks",
        "committed",
        "error",
        "first_chunk_at",
        "key",
        "model",
        "queue_wait",
        "request_id",
        "requested_model",
        "route",
        "started",
        "status",
        "usage",
    )

    def __init__(self, request_id: str, route: str) -> None:
        self.request_id = request_id
        self.route = route
        self.started = time.perf_counter()
        self.model = ""
        self.key = ""
        self.requested_model: str | None = None
        self.queue_wait: float | None = None
        self.usage: Usage | None = None
        self.status = 0
        self.committed = False
        self.first_chunk_at: float | None = None
        self.chunks = 0
        self.bytes = 0
        self.error: str | None = None

    @property
    def first_chunk_seconds(self) -> float | None:
        """Seconds from the request to its first streamed chunk (streams only)."""
        return None if self.first_chunk_at is None else self.first_chunk_at - self.started


def log_exchange(exchange: Exchange, method: str, path: str, seconds: float) -> None:
    """Emit the access-log event of a finished request (probes at debug level)."""
    ttfc = exchange.first_chunk_seconds
    fields: dict[str, object] = {
        "method": method,
        "path": path,
        "route": exchange.route,
        "status": exchange.status,
        "latency_ms": round(seconds * 1000, 3),
    }
    if exchange.key:
        fields["key"] = exchange.key
    if exchange.model or exchange.requested_model:
        fields["model"] = exchange.model or None
        fields["requested_model"] = _clip(exchange.requested_model)
    if exchange.queue_wait is not None:
        fields["queue_wait_ms"] = round(exchange.queue_wait * 1000, 3)
    if exchange.usage is not None:
        fields["prompt_tokens"] = exchange.usage.prompt_tokens
        fields["completion_tokens"] = exchange.usage.completion_tokens
    if ttfc is not None:
        fields["ttfc_ms"] = round(ttfc * 1000, 3)
        fields["chunks"] = exchange.chunks
        fields["bytes"] = exchange.bytes
    if exchange.error is not None:
        fields["error"] = exchange.error
    if exchange.route in _QUIET_ROUTES and exchange.status < 400:
        _log.debug("request", **fields)
    else:
        _log.info("request", **fields)


def _clip(name: str | None) -> str | None:
    """A client-chosen name as logged: bounded, so one request cannot write a huge line."""
    if name is None or len(name) <= _MAX_LOGGED_NAME:
        return name
    return f"{name[:_MAX_LOGGED_NAME]}... ({len(name)} characters)"
