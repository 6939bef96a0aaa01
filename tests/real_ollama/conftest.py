"""Session fixtures for the suites that run against a real ``ollama`` and the tutorial's models.

``scripts/real-ollama.sh`` yields the executable (the ``ollama`` on PATH, or the pinned v0.24.0
built with ``go install``) and a models directory holding ``smollm2:135m`` and ``all-minilm:l6-v2``,
both cached outside the repository. In CI (``CI`` set to anything but empty, ``0`` or ``false``) the
fixture runs the script and a failure fails the tests: they never skip there. Elsewhere it only uses
what is already cached (``--check``) and skips, with one line saying how to enable them, when
nothing is.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.real_ollama.support import REPO, RealOllama

SCRIPT = REPO / "scripts" / "real-ollama.sh"

PREPARE_TIMEOUT = 45 * 60.0
"""A cold build of Ollama plus the models on 2 cores (about 10 min measured, with margin)."""
CHECK_TIMEOUT = 30.0
"""``real-ollama.sh --check`` looks at files only."""


def in_ci() -> bool:
    """Whether this run is CI's: ``CI`` set to a value other than empty, ``0`` or ``false``."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def _parse(stdout: str) -> RealOllama:
    values = dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)
    return RealOllama(bin=Path(values["OLLAMA_BIN"]), models=Path(values["OLLAMA_MODELS"]))


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def real_ollama() -> RealOllama:
    """The real executable and models; built and created first in CI, else skipped when absent."""
    if in_ci():
        try:
            done = subprocess.run(
                ["bash", str(SCRIPT)],
                capture_output=True,
                text=True,
                timeout=PREPARE_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
            pytest.fail(
                f"scripts/real-ollama.sh did not finish within {PREPARE_TIMEOUT:g}s:\n"
                f"{_tail(stderr)}",
                pytrace=False,
            )
        if done.returncode != 0:
            pytest.fail(
                f"scripts/real-ollama.sh failed (exit {done.returncode}):\n{_tail(done.stderr)}",
                pytrace=False,
            )
        return _parse(done.stdout)
    done = subprocess.run(
        ["bash", str(SCRIPT), "--check"],
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(
            "real Ollama and its models are not cached: run scripts/real-ollama.sh once "
            "(about 10 minutes the first time), or set CI=1 to build them during the tests"
        )
    return _parse(done.stdout)
