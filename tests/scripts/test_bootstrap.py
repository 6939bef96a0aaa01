"""scripts/bootstrap.sh on a fresh clone, fresh HOME and plain PATH: every way it finds uv, and
the one line it fails with when there is none."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.scripts.fresh_clone import (
    BOOTSTRAP,
    INSTALLING,
    PLAIN_PATH,
    REPO,
    SYSTEM_PYTHON,
    clone,
    command_dir,
    default_python,
    fresh_env,
    run,
)

TOOLS = Path(".bootstrap/venv")
SLOW_TIMEOUT = 900  # pytest's limit for one case: a cold download cache fetches every package

# Debian's python3 without python3-venv (no ensurepip), or without python3-pip and uv as well.
NO_ENSUREPIP = f"""
if [ "$1" = -m ] && [ "$2" = venv ]; then
    case " $* " in *" --without-pip "*) ;; *)
        echo "The virtual environment was not created successfully because ensurepip is not" \
             "available." >&2
        exit 1;;
    esac
fi
exec {SYSTEM_PYTHON} "$@"
"""
NO_VENV_NO_PIP = f"""
if [ "$1" = -m ]; then
    case "$2" in venv|ensurepip|pip|uv)
        echo "{SYSTEM_PYTHON}: No module named $2" >&2; exit 1;;
    esac
fi
exec {SYSTEM_PYTHON} "$@"
"""
TOO_OLD = """
case "$1" in -V|--version) echo "Python 3.9.2"; exit 0;; esac
exit 1
"""

needs_system_python = pytest.mark.skipif(
    not SYSTEM_PYTHON.exists(), reason=f"no {SYSTEM_PYTHON} (Debian's own Python) here"
)
needs_no_uv_on_plain_path = pytest.mark.skipif(
    shutil.which("uv", path=PLAIN_PATH) is not None, reason="a uv on the plain PATH here"
)


def check_venv(repo: Path, python: Path | None = None) -> None:
    """``repo/.venv`` has the project with its dev tools and extras, on ``python`` if given."""
    venv_python = repo / ".venv" / "bin" / "python"
    probe = subprocess.run(
        [str(venv_python), "-c", "import proxy, ubiops, pytest, sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() >= "(3, 11)"
    if python is not None:
        config = (repo / ".venv" / "pyvenv.cfg").read_text()
        assert f"home = {python.parent}" in config.splitlines(), config


@needs_system_python
@pytest.mark.slow
@pytest.mark.timeout(SLOW_TIMEOUT)
def test_an_externally_managed_python_gets_uv_in_a_private_environment(
    system_clone: tuple[Path, Path],
) -> None:
    repo, home = system_clone
    check_venv(repo, SYSTEM_PYTHON)
    assert (repo / TOOLS / "bin" / "uv").exists()
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(TOOLS / "bin" / "uv")], cwd=REPO, check=False
    )
    assert ignored.returncode == 0, ".bootstrap/ must be ignored by git"
    again = run(repo, BOOTSTRAP, fresh_env(home))
    assert (again.returncode, again.stderr) == (0, "")


@needs_system_python
@pytest.mark.slow
@pytest.mark.timeout(SLOW_TIMEOUT)
def test_a_uv_on_path_is_used(system_clone: tuple[Path, Path], tmp_path: Path) -> None:
    uv = system_clone[0] / TOOLS / "bin" / "uv"
    repo = clone(tmp_path / "repo")
    bin_dir = command_dir(tmp_path / "bin", {"uv": uv})
    result = run(repo, BOOTSTRAP, fresh_env(tmp_path / "home", front=bin_dir))
    assert (result.returncode, result.stderr) == (0, "")
    assert not (repo / ".bootstrap").exists()
    check_venv(repo, SYSTEM_PYTHON)


@needs_system_python
@pytest.mark.slow
@pytest.mark.timeout(SLOW_TIMEOUT)
def test_a_python_with_the_uv_module_is_used(
    system_clone: tuple[Path, Path], tmp_path: Path
) -> None:
    python_with_uv = system_clone[0] / TOOLS / "bin" / "python"
    repo = clone(tmp_path / "repo")
    bin_dir = command_dir(tmp_path / "bin", {"python3": f'exec {python_with_uv} "$@"'})
    result = run(repo, BOOTSTRAP, fresh_env(tmp_path / "home", front=bin_dir))
    assert (result.returncode, result.stderr) == (0, "")
    assert not (repo / ".bootstrap").exists()
    check_venv(repo)


@pytest.mark.slow
@pytest.mark.timeout(SLOW_TIMEOUT)
def test_the_default_interpreter(tmp_path: Path) -> None:
    """The interpreter this suite runs on, alone on the plain PATH (with or without uv in it)."""
    python = default_python()
    repo = clone(tmp_path / "repo")
    bin_dir = command_dir(tmp_path / "bin", {"python3": python})
    result = run(repo, BOOTSTRAP, fresh_env(tmp_path / "home", front=bin_dir))
    assert result.returncode == 0, result.stderr
    assert result.stderr in ("", f"{INSTALLING} (no uv on PATH, nor as `python3 -m uv`)\n")
    check_venv(repo)


@needs_system_python
@pytest.mark.slow
@pytest.mark.timeout(SLOW_TIMEOUT)
@needs_no_uv_on_plain_path
def test_without_ensurepip_the_interpreters_pip_fills_the_private_environment(
    tmp_path: Path,
) -> None:
    repo = clone(tmp_path / "repo")
    bin_dir = command_dir(tmp_path / "bin", {"python3": NO_ENSUREPIP})
    result = run(repo, BOOTSTRAP, fresh_env(tmp_path / "home", front=bin_dir))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"{INSTALLING} (no uv on PATH, nor as `python3 -m uv`), with python3's pip"
    ]
    check_venv(repo)


def _scripts_only(tmp_path: Path) -> Path:
    """Enough of a clone for a bootstrap that stops before uv: its scripts."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "scripts" / "bootstrap.sh").write_bytes((REPO / "scripts/bootstrap.sh").read_bytes())
    (repo / "scripts" / "bootstrap.sh").chmod(0o755)
    return repo


def _one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bootstrap: ")
    return lines[0]


@needs_system_python
@needs_no_uv_on_plain_path
def test_with_no_way_to_get_uv_it_says_what_to_install_in_one_line(tmp_path: Path) -> None:
    repo = _scripts_only(tmp_path)
    bin_dir = command_dir(tmp_path / "bin", {"python3": NO_VENV_NO_PIP})
    line = _one_line_failure(run(repo, BOOTSTRAP, fresh_env(tmp_path / "home", front=bin_dir)))
    assert "python3-venv" in line
    assert "install uv" in line
    assert not (repo / ".bootstrap" / "venv").exists()


@needs_no_uv_on_plain_path
def test_with_no_python_and_no_uv_it_says_so(tmp_path: Path) -> None:
    repo = _scripts_only(tmp_path)
    env = fresh_env(tmp_path / "home", PYTHON="python3.missing")
    line = _one_line_failure(run(repo, BOOTSTRAP, env))
    assert "no uv and no python3.missing" in line
    assert "install uv" in line


@needs_no_uv_on_plain_path
def test_a_python_older_than_3_11_is_named(tmp_path: Path) -> None:
    repo = _scripts_only(tmp_path)
    bin_dir = command_dir(tmp_path / "bin", {"python3": TOO_OLD})
    line = _one_line_failure(run(repo, BOOTSTRAP, fresh_env(tmp_path / "home", front=bin_dir)))
    assert "needs Python 3.11+" in line
    assert "Python 3.9.2" in line
