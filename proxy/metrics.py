"""Prometheus metrics of one proxy, in a registry of its own (never the global one).

The request middleware records each finished request once (:meth:`Metrics.observe`): by route,
model and key name (never the key), with its latency, time to first token, time in the queue and
token usage as Ollama reported it. Gauges that mirror live state (requests in flight and queued
per model, readiness, restarts, the models Ollama has loaded) are read at scrape time, so they
cost nothing per request. Labels are bounded: models are the catalog's tags, keys the
configured names, routes the declared paths. The supervisor reports pull durations through
:meth:`Metrics.observe_pull`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.access_log import Exchange
from proxy.admission import Admission
from proxy.state import InstanceState

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
_PULL_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
_RATE_BUCKETS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 10000.0)
_MODEL_KEY = ("model", "key")


class Metrics:
    """The proxy's metrics; one instance per application.

    Args:
        state: the readiness state, read at scrape time for restarts, readiness and models.
        registry: where to register; a fresh :class:`CollectorRegistry` by default.
    """

    def __init__(self, state: InstanceState, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "proxy_requests",
            "Requests answered, by route, model, key name and HTTP status.",
            ("route", "model", "key", "status"),
            registry=r,
        )
        self.latency = Histogram(
            "proxy_request_duration_seconds",
            "Time from request to the last byte of the response, by route.",
            ("route",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.first_chunk = Histogram(
            "proxy_time_to_first_chunk_seconds",
            "Time from request to the first streamed chunk, by route (streams only).",
            ("route",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.first_token = Histogram(
            "proxy_time_to_first_token_seconds",
            "Time from request to the first streamed token, by model and key (streams only).",
            _MODEL_KEY,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "proxy_queue_wait_seconds",
            "Time a request waited for a slot of its model, by model and key.",
            _MODEL_KEY,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "proxy_prompt_tokens",
            "Prompt tokens Ollama processed, by model and key.",
            _MODEL_KEY,
            registry=r,
        )
        self.completion_tokens = Counter(
            "proxy_completion_tokens",
            "Tokens Ollama generated, by model and key.",
            _MODEL_KEY,
            registry=r,
        )
        self.generation_rate = Histogram(
            "proxy_generation_tokens_per_second",
            "Generation speed per request (Ollama's eval_count / eval_duration), by model and key.",
            _MODEL_KEY,
            buckets=_RATE_BUCKETS,
            registry=r,
        )
        self.prompt_rate = Histogram(
            "proxy_prompt_tokens_per_second",
            "Prompt processing speed per request (prompt_eval_count / prompt_eval_duration).",
            _MODEL_KEY,
            buckets=_RATE_BUCKETS,
            registry=r,
        )
        self.load_time = Histogram(
            "proxy_model_load_seconds",
            "Time Ollama spent loading the model for a request (load_duration), by model.",
            ("model",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stream_errors = Counter(
            "proxy_stream_errors",
            "Streams that failed after they started (error written in-band), by route.",
            ("route",),
            registry=r,
        )
        self.pulls = Histogram(
            "proxy_model_pull_duration_seconds",
            "Duration of model pulls, by model and outcome.",
            ("model", "outcome"),
            buckets=_PULL_BUCKETS,
            registry=r,
        )
        self._live = _LiveCollector(state)
        r.register(self._live)

    def track_admission(self, admission: Admission) -> None:
        """Report the admission's lanes (in flight and queued, per model) at scrape time."""
        self._live.admission = admission

    def set_loaded(self, models: Iterable[str]) -> None:
        """The models Ollama has in memory (``/api/ps``), for the next scrape."""
        self._live.loaded = frozenset(models)

    def observe(self, exchange: Exchange, seconds: float, *, stream_failed: bool) -> None:
        """Record one finished request."""
        model, key = exchange.model, exchange.key or "local"
        self.requests.labels(exchange.route, model, key, str(exchange.status)).inc()
        self.latency.labels(exchange.route).observe(seconds)
        first = exchange.first_chunk_seconds
        if first is not None:
            self.first_chunk.labels(exchange.route).observe(first)
            if model:
                self.first_token.labels(model, key).observe(first)
        if stream_failed:
            self.stream_errors.labels(exchange.route).inc()
        if not model:
            return
        if exchange.queue_wait is not None:
            self.queue_wait.labels(model, key).observe(exchange.queue_wait)
        usage = exchange.usage
        if usage is None:
            return
        if usage.prompt_tokens:
            self.prompt_tokens.labels(model, key).inc(usage.prompt_tokens)
            _rate(self.prompt_rate.labels(model, key), usage.prompt_tokens, usage.prompt_seconds)
        if usage.completion_tokens:
            self.completion_tokens.labels(model, key).inc(usage.completion_tokens)
            generated = usage.completion_seconds
            if generated is None and first is not None:  # OpenAI-style: no durations given
                generated = seconds - first
            _rate(self.generation_rate.labels(model, key), usage.completion_tokens, generated)
        if usage.load_seconds is not None:
            self.load_time.labels(model).observe(usage.load_seconds)

    def observe_pull(self, model: str, seconds: float, outcome: str = "success") -> None:
        """Record one pull of ``model`` (its Ollama tag) that took ``seconds``.

        ``outcome`` is a short fixed word such as ``success``, ``failed`` or ``cancelled``.
        """
        self.pulls.labels(model, outcome).observe(seconds)

    def render(self) -> bytes:
        """The registry in the Prometheus text format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


def _rate(histogram: Any, tokens: int, seconds: float | None) -> None:
    if seconds is not None and seconds > 0:
        histogram.observe(tokens / seconds)


class _LiveCollector(Collector):
    """Values read from live objects at scrape time."""

    def __init__(self, state: InstanceState) -> None:
        self._state = state
        self.admission: Admission | None = None
        self.loaded: frozenset[str] = frozenset()

    def collect(self) -> Iterator[Metric]:
        lanes = self.admission.lanes if self.admission is not None else {}
        models = [lane for name, lane in lanes.items() if name in self._state.models]
        yield GaugeMetricFamily(
            "proxy_requests_in_flight",
            "Requests being forwarded to Ollama now, all models.",
            sum(lane.active for lane in models),
        )
        yield GaugeMetricFamily(
            "proxy_requests_queued",
            "Requests waiting for a slot, all models.",
            sum(lane.queued for lane in models),
        )
        yield _per_model(
            "proxy_model_requests_in_flight",
            "Requests being forwarded to Ollama now, by model.",
            ((lane.model, lane.active) for lane in models),
        )
        yield _per_model(
            "proxy_model_requests_queued",
            "Requests waiting for a slot of the model, by model.",
            ((lane.model, lane.queued) for lane in models),
        )
        yield _per_model(
            "proxy_model_concurrency",
            "The model's budget: requests in Ollama at once.",
            ((lane.model, lane.limit) for lane in models),
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
        yield _per_model(
            "proxy_model_servable",
            "1 when requests for the model can be served.",
            ((tag, int(self._state.model_servable(tag))) for tag in self._state.models),
        )
        yield _per_model(
            "proxy_model_loaded",
            "1 when Ollama has the model in memory (its /api/ps, at the scrape).",
            ((tag, int(tag in self.loaded)) for tag in self._state.models),
        )


def _per_model(name: str, help_text: str, values: Iterable[tuple[str, float]]) -> Metric:
    family = GaugeMetricFamily(name, help_text, labels=["model"])
    for model, value in values:
        family.add_metric([model], value)
    return family
