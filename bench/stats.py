"""Small, dependency-free statistics for paired benchmark rounds.

Every figure the bench reports is computed *per round* (baseline and subject measured side by
side in that round) and then summarised across rounds with :func:`summarize`: the median is the
figure, min/max and the inter-quartile range show how much the rounds disagreed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

__all__ = ["Summary", "percentile", "ratio", "summarize"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, linearly interpolated (NumPy's default).

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    pos = (len(ordered) - 1) * min(max(q, 0.0), 100.0) / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    frac = pos - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * frac)


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, or NaN when the denominator is zero."""
    return numerator / denominator if denominator else math.nan


@dataclass(frozen=True, slots=True)
class Summary:
    """Median and spread of one figure across rounds."""

    median: float
    min: float
    max: float
    q1: float
    q3: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def summarize(values: Sequence[float]) -> Summary:
    """Summarise per-round values (NaNs dropped); an empty input gives an all-NaN summary."""
    clean = [float(v) for v in values if not math.isnan(float(v))]
    if not clean:
        nan = math.nan
        return Summary(nan, nan, nan, nan, nan, 0)
    return Summary(
        median=percentile(clean, 50),
        min=min(clean),
        max=max(clean),
        q1=percentile(clean, 25),
        q3=percentile(clean, 75),
        n=len(clean),
    )
