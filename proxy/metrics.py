"""Prometheus metrics of one proxy, in a registry of its own (never the global one).

The app records one observation per request (:meth:`Metrics.observe_request`); gauges that mirror
live state (in-flight and queued requests, Ollama restarts, readiness) are read at scrape time, so
they cost nothing per request. The supervisor and the pull workers report pull durations through
:meth:`Metrics.observe_pull`::

    metrics = app[METRICS]              # proxy.appkeys.METRICS, or the one passed to create_app
    started = time.monotonic()
    ...                                 # pull the model
    metrics.observe_pull("smollm2:135m", time.monotonic() - started, outcome="success")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.state import InstanceState

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
_PULL_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)


class Metrics:
    """The proxy's metrics; one instance per application.

    Args:
        state: the readiness state, read at scrape time for restarts, readiness and models.
        registry: where to register; a fresh :class:`CollectorRegistry` by default.
    """

    def __init__(self, state: InstanceState, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "proxy_requests",
            "Requests answered, by route, model and HTTP status.",
            ("route", "model", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "proxy_request_duration_seconds",
            "Time from request to the last byte of the response, by route.",
            ("route",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_chunk = Histogram(
            "proxy_time_to_first_chunk_seconds",
            "Time from request to the first streamed chunk, by route (streams only).",
            ("route",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stream_errors = Counter(
            "proxy_stream_errors",
            "Streams that failed after they started (error written in-band), by route.",
            ("route",),
            registry=self.registry,
        )
        self.pulls = Histogram(
            "proxy_model_pull_duration_seconds",
            "Duration of model pulls, by model and outcome.",
            ("model", "outcome"),
            buckets=_PULL_BUCKETS,
            registry=self.registry,
        )
        self._live = _LiveCollector(state)
        self.registry.register(self._live)
        # Label children cached by label values: labels() takes a lock and validates each call.
        self._request_children: dict[tuple[str, str, int], Counter] = {}
        self._latency_children: dict[str, tuple[Histogram, Histogram]] = {}

    def track_load(self, in_flight: Callable[[], int], queued: Callable[[], int]) -> None:
        """Report ``in_flight()`` and ``queued()`` (the guard's counts) at scrape time."""
        self._live.in_flight = in_flight
        self._live.queued = queued

    def observe_request(
        self, route: str, model: str, status: int, seconds: float, first_chunk: float | None
    ) -> None:
        """Record one answered request (``first_chunk``: seconds to the first streamed chunk)."""
        key = (route, model, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(route, model, str(status))
        counter.inc()
        histograms = self._latency_children.get(route)
        if histograms is None:
            histograms = self._latency_children[route] = (
                self.latency.labels(route),
                self.first_chunk.labels(route),
            )
        histograms[0].observe(seconds)
        if first_chunk is not None:
            histograms[1].observe(first_chunk)

    def observe_stream_error(self, route: str) -> None:
        """Record a stream that failed after its headers were sent."""
        self.stream_errors.labels(route).inc()

    def observe_pull(self, model: str, seconds: float, outcome: str = "success") -> None:
        """Record one pull of ``model`` (its Ollama tag) that took ``seconds``.

        ``outcome`` is a short fixed word such as ``success``, ``failed`` or ``cancelled``.
        """
        self.pulls.labels(model, outcome).observe(seconds)

    def render(self) -> bytes:
        """The registry in the Prometheus text format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    """Values read from live objects at scrape time."""

    def __init__(self, state: InstanceState) -> None:
        self._state = state
        self.in_flight: Callable[[], int] = lambda: 0
        self.queued: Callable[[], int] = lambda: 0

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "proxy_requests_in_flight", "Requests being forwarded to Ollama now.", self.in_flight()
        )
        yield GaugeMetricFamily(
            "proxy_requests_queued", "Requests waiting for a forwarding slot.", self.queued()
        )
        yield CounterMetricFamily(
            "proxy_ollama_restarts",
            "Times the supervised Ollama server was restarted.",
            self._state.ollama_restarts,
        )
        yield GaugeMetricFamily(
            "proxy_ready",
            "1 when the instance takes requests (/readyz answers 200).",
            int(self._state.serving),
        )
        servable = GaugeMetricFamily(
            "proxy_model_servable", "1 when requests for the model can be served.", labels=["model"]
        )
        for tag in self._state.models:
            servable.add_metric([tag], int(self._state.model_servable(tag)))
        yield servable
