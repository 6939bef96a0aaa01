"""Measurements shared by the scenarios, each one load-generator job turned into numbers."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from bench.loadgen import LoadGen
from bench.stack import Target
from bench.stats import percentile

__all__ = [
    "Latency",
    "Saturation",
    "StreamLatency",
    "latency_round",
    "paired",
    "rotate",
    "saturate",
    "stream_latency_round",
]

T = TypeVar("T")


def rotate(items: Sequence[T], i: int) -> list[T]:
    """``items`` rotated by ``i`` places: over the rounds each target takes each place in the
    order (with two targets, plain alternation)."""
    k = i % len(items) if items else 0
    return [*items[k:], *items[:k]]


@dataclass(frozen=True, slots=True)
class Latency:
    """Percentiles (ms) of one target's request times in one round."""

    p50: float
    p99: float
    n: int
    errors: int


def latency_round(
    lg: LoadGen,
    targets: Sequence[Target],
    path: str,
    body: dict[str, Any],
    requests: int,
    warmup: int,
) -> tuple[dict[str, Latency], float]:
    """One round at concurrency 1, requests alternated between ``targets``.

    Returns each target's :class:`Latency` and the load generator's CPU% during the round.

    Raises:
        RuntimeError: a target answered a request with an error.
    """
    result = lg.run(
        {
            "op": "latency",
            "targets": [t.as_job() for t in targets],
            "path": path,
            "body": body,
            "requests": requests,
            "warmup": warmup,
        }
    )
    if any(result["errors"].values()):
        raise RuntimeError(f"{path}: errors {result['errors']} ({result['statuses']})")
    out = {}
    for name, values in result["latencies_ms"].items():
        out[name] = Latency(
            p50=percentile(values, 50),
            p99=percentile(values, 99),
            n=len(values),
            errors=result["errors"][name],
        )
    return out, float(result["loadgen_cpu_pct"])


@dataclass(frozen=True, slots=True)
class Saturation:
    """Throughput and CPU of one saturated run, measured inside its window."""

    requests_per_s: float
    chunks_per_s: float
    requests: int
    chunks: int
    errors: int
    window_s: float
    cpu_s: dict[str, float]
    loadgen_cpu_pct: float
    rss_peak: dict[str, int]

    def cpu_per(self, role: str, unit: str, per: float) -> float:
        """CPU seconds ``role`` spent per ``per`` requests (``unit="requests"``) or chunks."""
        count = self.requests if unit == "requests" else self.chunks
        return self.cpu_s.get(role, 0.0) / count * per if count else float("nan")


def saturate(
    lg: LoadGen,
    target: Target,
    path: str,
    body: dict[str, Any],
    *,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    stream: bool,
    watch: Mapping[str, Sequence[int]],
) -> Saturation:
    """Closed-loop load on ``target``; ``watch`` maps a role name to the pids whose CPU counts."""
    pids = sorted({pid for group in watch.values() for pid in group})
    result = lg.run(
        {
            "op": "saturate",
            "target": target.as_job(),
            "path": path,
            "body": body,
            "concurrency": concurrency,
            "warmup_s": warmup_s,
            "duration_s": duration_s,
            "stream": stream,
            "watch_pids": pids,
        },
        timeout=warmup_s + duration_s + 120,
    )
    window = float(result["window_s"])
    cpu = {
        role: sum(result["cpu_s"].get(str(pid), 0.0) for pid in group)
        for role, group in watch.items()
    }
    return Saturation(
        requests_per_s=result["requests"] / window,
        chunks_per_s=result["chunks"] / window,
        requests=int(result["requests"]),
        chunks=int(result["chunks"]),
        errors=int(result["errors"]),
        window_s=window,
        cpu_s=cpu,
        loadgen_cpu_pct=float(result["loadgen_cpu_pct"]),
        rss_peak={k: int(v) for k, v in result["rss_peak"].items()},
    )


@dataclass(frozen=True, slots=True)
class StreamLatency:
    """One target's streams in one round, in the order they ran (ms, chunks per second).

    With targets alternated request by request, the k-th stream of one target ran right next
    to the k-th of another: :func:`paired` compares them pair by pair.
    """

    ttfc_ms: tuple[float, ...]
    total_ms: tuple[float, ...]
    decode_per_s: tuple[float, ...]
    chunks: tuple[int, ...]
    digests: tuple[str, ...]


def paired(
    subject: Sequence[float], baseline: Sequence[float], op: Callable[[float, float], float]
) -> float:
    """The median of ``op(subject[k], baseline[k])`` over the pairs of neighbouring requests."""
    return percentile([op(a, b) for a, b in zip(subject, baseline, strict=True)], 50)


def stream_latency_round(
    lg: LoadGen,
    targets: Sequence[Target],
    path: str,
    body: dict[str, Any],
    requests: int,
    warmup: int,
) -> tuple[dict[str, StreamLatency], float]:
    """One round of streams at concurrency 1, alternated between ``targets``.

    Returns each target's :class:`StreamLatency` (ms, chunks per second) and the load
    generator's CPU% during the round.

    Raises:
        RuntimeError: a stream failed (an error status, an error chunk, or no ``[DONE]``).
    """
    result = lg.run(
        {
            "op": "stream_latency",
            "targets": [t.as_job() for t in targets],
            "path": path,
            "body": body,
            "requests": requests,
            "warmup": warmup,
        },
        timeout=600.0,
    )
    if any(result["errors"].values()):
        raise RuntimeError(f"{path}: errors {result['errors']}: {result['error_samples']}")
    out = {}
    for name, rec in result["targets"].items():
        out[name] = StreamLatency(
            ttfc_ms=tuple(rec["ttfc_ms"]),
            total_ms=tuple(rec["total_ms"]),
            decode_per_s=tuple(rec["decode_per_s"]),
            chunks=tuple(rec["chunks"]),
            digests=tuple(rec["digests"]),
        )
    return out, float(result["loadgen_cpu_pct"])
