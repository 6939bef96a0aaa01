"""Benchmark results: figures with targets, a plain-text table and the JSON file.

A :class:`Figure` holds the per-round values of one measurement; its value is their median, its
spread their min/max. A figure with a :class:`Target` gets a PASS/MISS verdict from the median.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.stats import Summary, summarize

__all__ = ["Figure", "ScenarioResult", "Target", "render_table", "write_json"]

Op = Literal["<", "<=", ">", ">="]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True, slots=True)
class Target:
    """``value <op> threshold``, judged on the median."""

    op: Op
    threshold: float

    def check(self, value: float) -> bool:
        return not math.isnan(value) and _OPS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.op} {self.threshold:g}"


@dataclass(slots=True)
class Figure:
    """One reported number: per-round values, unit, optional target and a note."""

    name: str
    unit: str
    values: list[float]
    target: Target | None = None
    note: str = ""

    @property
    def summary(self) -> Summary:
        return summarize(self.values)

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        return "PASS" if self.target.check(self.summary.median) else "MISS"

    def as_dict(self) -> dict[str, Any]:
        s = self.summary
        out: dict[str, Any] = {
            "unit": self.unit,
            "median": _json_num(s.median),
            "min": _json_num(s.min),
            "max": _json_num(s.max),
            "q1": _json_num(s.q1),
            "q3": _json_num(s.q3),
            "rounds": [_json_num(v) for v in self.values],
        }
        if self.target is not None:
            out["target"] = str(self.target)
            out["verdict"] = self.verdict
        if self.note:
            out["note"] = self.note
        return out


@dataclass(slots=True)
class ScenarioResult:
    """The figures of one scenario, its notes and any extra data worth keeping in the JSON."""

    name: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    error: str | None = None

    def add(
        self,
        name: str,
        unit: str,
        values: Sequence[float],
        target: Target | None = None,
        note: str = "",
    ) -> Figure:
        fig = Figure(name, unit, [float(v) for v in values], target, note)
        self.figures.append(fig)
        return fig

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"title": self.title}
        if self.skipped is not None:
            out["skipped"] = self.skipped
        if self.error is not None:
            out["error"] = self.error
        out["figures"] = {f.name: f.as_dict() for f in self.figures}
        if self.notes:
            out["notes"] = self.notes
        if self.extra:
            out["extra"] = self.extra
        return out


def render_table(results: Sequence[ScenarioResult]) -> str:
    """A fixed-width table: scenario, figure, median, spread, unit, target, verdict."""
    header = ("scenario", "figure", "median", "spread (min..max)", "unit", "target", "")
    rows: list[tuple[str, ...]] = []
    for result in results:
        if result.skipped is not None or result.error is not None:
            why = f"SKIPPED: {result.skipped}" if result.skipped else f"ERROR: {result.error}"
            rows.append((result.name, why[:90], "", "", "", "", ""))
            continue
        for i, fig in enumerate(result.figures):
            s = fig.summary
            spread = f"{_fmt(s.min)}..{_fmt(s.max)}" if s.n > 1 else ""
            rows.append(
                (
                    result.name if i == 0 else "",
                    fig.name,
                    _fmt(s.median),
                    spread,
                    fig.unit,
                    str(fig.target) if fig.target else "",
                    fig.verdict,
                )
            )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [_row(header, widths), _row(tuple("-" * w for w in widths), widths)]
    lines += [_row(r, widths) for r in rows]
    notes = [f"  [{r.name}] {n}" for r in results for n in r.notes]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def write_json(path: Path, results: Sequence[ScenarioResult], meta: dict[str, Any]) -> None:
    """Write ``{"meta": ..., "<scenario>": ...}`` atomically (via a ``.tmp`` sibling)."""
    data: dict[str, Any] = {"meta": meta}
    data.update({r.name: r.as_dict() for r in results})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


def _row(cells: tuple[str, ...], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _json_num(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)
