"""The clone every script test can share: bootstrapped once, with Debian's python3 alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.scripts.fresh_clone import (
    BOOTSTRAP,
    INSTALLING,
    PLAIN_PATH,
    SYSTEM_PYTHON,
    clone,
    fresh_env,
    run,
)


@pytest.fixture(scope="session")
def system_clone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A clone bootstrapped with Debian's externally managed python3 alone (fresh HOME, plain
    PATH, no uv); ``(clone, its HOME)``. Its bootstrap must say, in one line, that it installs uv
    into the private tools environment."""
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"no {SYSTEM_PYTHON} (Debian's own Python) here")
    if shutil.which("uv", path=PLAIN_PATH):
        pytest.skip("a uv on the plain PATH here: Debian's python3 alone cannot be tried")
    base = tmp_path_factory.mktemp("system")
    repo = clone(base / "repo")
    first = run(repo, BOOTSTRAP, fresh_env(base / "home"))
    assert first.returncode == 0, first.stderr
    assert first.stderr.splitlines() == [f"{INSTALLING} (no uv on PATH, nor as `python3 -m uv`)"], (
        first.stderr
    )
    return repo, base / "home"
