"""One module per scenario, each with ``NAME``, ``TITLE`` and ``run(bench) -> ScenarioResult``."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from bench.context import Bench
from bench.report import ScenarioResult
from bench.scenarios import cost, latency, litellm, memory, pace, readiness, real, ubiops

__all__ = ["SCENARIOS", "Runner"]

Runner = Callable[[Bench], ScenarioResult]

_MODULES: tuple[ModuleType, ...] = (
    latency,
    cost,
    pace,
    ubiops,
    litellm,
    real,
    readiness,
    memory,
)

SCENARIOS: dict[str, ModuleType] = {m.NAME: m for m in _MODULES}
"""Scenario name (the JSON key) → its module, in run order."""
