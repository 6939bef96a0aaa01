"""A seconds-long run of every benchmark scenario: the harness works end to end.

Benchmarks are not tests: nothing here checks a speed target. It checks that each scenario ran
against the real stack, compared subject and baseline, and produced finite positive figures.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCENARIOS = ("latency", "cost", "pace", "ubiops", "litellm", "readiness", "memory")
SMOKE_TIMEOUT = 240


def test_smoke_run_reports_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    for name in SCENARIOS:
        assert name in report, name
    assert report["litellm"]["skipped"], "smoke mode must not install LiteLLM"
    for name in SCENARIOS:
        if name == "litellm":
            continue
        figures = report[name]["figures"]
        assert figures, f"{name} produced no figures"
        for label, figure in figures.items():
            assert math.isfinite(figure["median"]), (name, label)
            if figure["unit"] == "x":  # a ratio; differences ("added ...") may be negative noise
                assert figure["median"] > 0, (name, label)
    pace = report["pace"]["figures"]
    assert pace["streams with a different chunk sequence"]["median"] == 0
    assert report["ubiops"]["figures"]["chunks/s, ours / tutorial"]["median"] > 0
