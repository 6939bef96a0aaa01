"""The README's commands, run as written in a fresh clone (fresh HOME, plain PATH, Debian's
python3 alone): the local stack, the deploy command's plan and help, the benchmarks' entry."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.scripts.fresh_clone import REPO, fresh_env, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

README = (REPO / "README.md").read_text()


def readme_command(start: str) -> tuple[dict[str, str], list[str]]:
    """The README command (in a ``bash`` block) that starts with ``start``, split into words,
    with the variables its block exports before it."""
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        exported: dict[str, str] = {}
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["export"]:
                for word in words[1:]:
                    name, _, value = word.partition("=")
                    exported[name] = value
            elif " ".join(words).startswith(start):
                return exported, words
    raise AssertionError(f"README: no command starting with {start!r}")


def test_deploy_dry_run_as_the_readme_shows_it(system_clone: tuple[Path, Path]) -> None:
    repo, home = system_clone
    exported, argv = readme_command("scripts/deploy.sh --dry-run")
    result = run(repo, argv, {**fresh_env(home), **exported})  # a plan calls nothing
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("dry run: the UbiOps API is not called"), result.stdout
    project = exported.get("UBIOPS_PROJECT") or argv[argv.index("--project") + 1]
    assert f"project: {project}" in result.stdout


def test_deploy_help(system_clone: tuple[Path, Path]) -> None:
    repo, home = system_clone
    result = run(repo, ["scripts/deploy.sh", "--help"], fresh_env(home))
    assert result.returncode == 0, result.stderr
    assert "--dry-run" in result.stdout


def test_the_local_stack(system_clone: tuple[Path, Path]) -> None:
    """``scripts/run-local.sh`` (the simulator: nothing else is on the plain PATH)."""
    repo, home = system_clone
    exported, argv = readme_command("scripts/run-local.sh")
    result = run(repo, argv, {**fresh_env(home), **exported})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "everything stopped cleanly" in result.stdout, result.stdout[-2000:]


def test_the_benchmarks_entry_point(system_clone: tuple[Path, Path]) -> None:
    """The README runs ``scripts/bootstrap.sh && .venv/bin/python -m bench``; its ``--help``."""
    repo, home = system_clone
    assert "`scripts/bootstrap.sh && .venv/bin/python -m bench`" in README
    result = run(repo, [".venv/bin/python", "-m", "bench", "--help"], fresh_env(home))
    assert result.returncode == 0, result.stderr
    assert "--smoke" in result.stdout
