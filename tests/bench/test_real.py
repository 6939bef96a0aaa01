"""The ``real`` bench scenario, seconds long, against the real Ollama and SmolLM2.

Like the suites in ``tests/real_ollama`` it uses their session fixture: in CI the real binary
and models are built first (never skipped there); elsewhere it skips unless they are cached.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.real_ollama.conftest import real_ollama  # noqa: F401  (the session fixture)
from tests.real_ollama.support import RealOllama

pytestmark = [pytest.mark.real_ollama, pytest.mark.slow, pytest.mark.timeout(900, func_only=True)]

REAL_TIMEOUT = 840
"""One round of a few short generations: seconds on idle cores, minutes on busy ones."""


def test_real_scenario_compares_the_proxy_with_direct(
    real_ollama: RealOllama,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "real.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", "real", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=REAL_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    real = json.loads(out.read_text())["real"]
    assert "skipped" not in real, real.get("skipped")
    assert real["extra"]["ollama"], "the version real Ollama reports"
    figures = real["figures"]
    for label, figure in figures.items():
        assert math.isfinite(figure["median"]), label
    assert figures["stream: tokens/s via proxy / direct"]["median"] > 0
    assert figures["stream: chunks per stream (context)"]["median"] > 1
