"""The README's commands, run as written in a fresh clone (fresh HOME, plain PATH, Debian's
python3 alone): the local stack, the deploy command's plan and help, the benchmarks' entry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.scripts.fresh_clone import REPO, fresh_env, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

README = (REPO / "README.md").read_text()


def readme_command(start: str) -> list[str]:
    """The README command (in a ``bash`` block) that starts with ``start``, split into words."""
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.splitlines():
            command = line.split("#")[0].strip()
            if command.startswith(start):
                return command.split()
    raise AssertionError(f"README: no command starting with {start!r}")


def test_deploy_dry_run_as_the_readme_shows_it(system_clone: tuple[Path, Path]) -> None:
    repo, home = system_clone
    argv = readme_command("scripts/deploy.sh --project my-project --dry-run")
    result = run(repo, argv, fresh_env(home))  # no UBIOPS_API_TOKEN: a plan calls nothing
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("dry run: the UbiOps API is not called"), result.stdout
    assert "project: my-project" in result.stdout


def test_deploy_help(system_clone: tuple[Path, Path]) -> None:
    repo, home = system_clone
    result = run(repo, ["scripts/deploy.sh", "--help"], fresh_env(home))
    assert result.returncode == 0, result.stderr
    assert "--dry-run" in result.stdout


def test_the_local_stack(system_clone: tuple[Path, Path]) -> None:
    """``scripts/run-local.sh`` (the simulator: nothing else is on the plain PATH)."""
    repo, home = system_clone
    result = run(repo, readme_command("scripts/run-local.sh"), fresh_env(home))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "everything stopped cleanly" in result.stdout, result.stdout[-2000:]


def test_the_benchmarks_entry_point(system_clone: tuple[Path, Path]) -> None:
    """The README runs ``scripts/bootstrap.sh && .venv/bin/python -m bench``; its ``--help``."""
    repo, home = system_clone
    assert "`scripts/bootstrap.sh && .venv/bin/python -m bench`" in README
    result = run(repo, [".venv/bin/python", "-m", "bench", "--help"], fresh_env(home))
    assert result.returncode == 0, result.stderr
    assert "--smoke" in result.stdout
