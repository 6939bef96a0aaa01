"""The project as a new user gets it: a fresh clone, a fresh HOME and a plain PATH.

A "clone" is a copy of the files git tracks in this working tree (with their uncommitted
changes, and untracked files that are not ignored), so nothing built here (``.venv``,
``.bootstrap``) comes along. Scripts run in it with a fresh ``HOME``, Debian's default ``PATH``
(plus, in front of it, a directory of the test's own commands when a case needs them) and this
machine's environment otherwise (its CA settings, its ``CI``), without anything that points
into a Python environment. uv's and pip's download caches are shared between runs
(:data:`CACHE`), so only the first run on a machine downloads the locked packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "BOOTSTRAP",
    "CACHE",
    "INSTALLING",
    "PLAIN_PATH",
    "REPO",
    "SYSTEM_PYTHON",
    "clone",
    "command_dir",
    "default_python",
    "fresh_env",
    "run",
]

REPO = Path(__file__).resolve().parents[2]
PLAIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""Debian's default PATH."""
SYSTEM_PYTHON = Path("/usr/bin/python3")
"""Debian's own Python: externally managed (PEP 668), no uv."""
CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "ubiops-ollama-proxy"
    / "bootstrap-tests"
)
BOOTSTRAP = ["scripts/bootstrap.sh"]
INSTALLING = "bootstrap: installing uv into .bootstrap/venv"
"""The start of bootstrap's one line when it installs uv for itself."""
RUN_TIMEOUT = 300.0
"""One script run in a clone (seconds): a cold cache downloads every locked package."""

_ENV_DROPPED = {
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "PYTHONSAFEPATH",
    "PIP_REQUIRE_VIRTUALENV",
    "PIP_USER",
    "PIP_TARGET",
    "PIP_PREFIX",
}
_ENV_DROPPED_PREFIXES = ("UV_", "PYENV", "XDG_", "PYTEST_")


def default_python() -> Path:
    """The interpreter this suite's environment was made from (the machine's default python3)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return Path(os.path.realpath(base))


def clone(dest: Path) -> Path:
    """Copy the working tree's git files to ``dest``; returns ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    for raw in filter(None, listed.split(b"\0")):
        name = os.fsdecode(raw)
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is left out
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def command_dir(directory: Path, commands: Mapping[str, str | Path]) -> Path:
    """A directory of commands to put in front of PATH.

    A :class:`Path` value becomes a symlink to that executable; a string is the body of a
    ``/bin/sh`` script.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for name, what in commands.items():
        path = directory / name
        if isinstance(what, Path):
            path.symlink_to(what)
        else:
            path.write_text(f"#!/bin/sh\n{what}\n")
            path.chmod(0o755)
    return directory


def fresh_env(home: Path, *, front: Path | None = None, **extra: str) -> dict[str, str]:
    """This machine's environment with a fresh ``home``, the plain PATH (``front`` first) and
    the shared download caches; then ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _ENV_DROPPED and not key.startswith(_ENV_DROPPED_PREFIXES)
    }
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        PATH=f"{front}:{PLAIN_PATH}" if front else PLAIN_PATH,
        UV_CACHE_DIR=str(CACHE / "uv"),
        PIP_CACHE_DIR=str(CACHE / "pip"),
    )
    env.update(extra)
    return env


def run(
    repo: Path, argv: list[str], env: Mapping[str, str], *, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (a path relative to ``repo`` first) in ``repo``, as a user types it."""
    return subprocess.run(
        argv,
        cwd=repo,
        env=dict(env),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
        timeout=timeout,
    )
