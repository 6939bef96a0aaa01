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

from bench.stack import StackError, find_nginx

pytestmark = pytest.mark.slow

SCENARIOS = ("latency", "cost", "pace", "ubiops", "litellm", "real", "readiness", "memory")
NOT_IN_SMOKE = ("litellm", "real")
"""Skipped in smoke mode: LiteLLM installs a venv; a real model is slow on busy cores."""
SMOKE_TIMEOUT = 240


def _nginx_installed() -> bool:
    try:
        find_nginx()
    except StackError:
        return False
    return True


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
    for name in NOT_IN_SMOKE:
        assert report[name]["skipped"], f"smoke mode must not run {name}"
    for name in SCENARIOS:
        if name in NOT_IN_SMOKE:
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


def test_smoke_run_measures_the_floors(tmp_path: Path) -> None:
    """nginx (any hop) and the bare aiohttp hop (a Python hop without the proxy's features)."""
    out = tmp_path / "smoke.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", "latency,cost", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    latency, cost = report["latency"], report["cost"]
    for kind, per in (("chat", "1k requests"), ("embeddings", "1k requests")):
        hop = cost["figures"][f"{kind}: bare aiohttp hop CPU per {per} (floor)"]["median"]
        proxy = cost["figures"][f"{kind}: proxy CPU per {per}"]["median"]
        assert 0 < hop < proxy, (kind, hop, proxy)  # the proxy does all the hop does, and more
    if not _nginx_installed():
        assert any("nginx floor not measured" in note for note in latency["notes"])
        pytest.skip("nginx is not installed (apt-get install nginx): only the note is checked")
    assert latency["extra"]["nginx"].startswith("nginx/")
    for kind in ("chat", "embeddings"):
        assert math.isfinite(latency["figures"][f"{kind}: nginx added p50 (floor)"]["median"])
    for kind, per in (("chat", "1k requests"), ("stream", "10k chunks")):
        cpu = cost["figures"][f"{kind}: nginx CPU per {per} (floor)"]["median"]
        assert cpu > 0, kind
        assert cost["figures"][f"{kind}: CPU per {per}, proxy / nginx"]["median"] > 0
