"""The ``ollama-sim`` command line, run as a real executable."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from proxy.testing import simulator as simulator_package
from proxy.testing.harness import free_port, http_json, simulator_command, wait_until
from proxy.testing.simulator import VERSION
from proxy.testing.simulator.__main__ import main

HELP_TIMEOUT = 20  # a help that started the server instead would never return
START_TIMEOUT = 20


def _run(
    *args: str, env: dict[str, str] | None = None, command: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(command or simulator_command()), *args],
        capture_output=True,
        text=True,
        timeout=HELP_TIMEOUT,
        env=env,
    )


def _isolated_env(home: Path, port: int) -> dict[str, str]:
    """This environment without its Ollama/simulator/XDG settings: a fresh HOME, a set port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "SIM_", "XDG_"))}
    env.update(HOME=str(home), OLLAMA_HOST=f"127.0.0.1:{port}", SIM_PULL_DELAY="0")
    return env


def _variables_the_simulator_reads() -> set[str]:
    """Every ``SIM_*``/``OLLAMA_*`` name quoted in the simulator's source (what it can read)."""
    names: set[str] = set()
    for path in Path(simulator_package.__file__).parent.glob("*.py"):
        names.update(re.findall(r"[\"'](SIM_[A-Z_]+|OLLAMA_[A-Z_]+)[\"']", path.read_text()))
    return names


def _listed_variables(help_text: str) -> dict[str, str]:
    """The help's environment section: ``{name: its line}``."""
    section = help_text.split("Environment Variables:\n", 1)[1].split("\n\n", 1)[0]
    return {line.split()[0]: line for line in section.splitlines()}


@pytest.mark.parametrize(
    "args", [("serve", "--help"), ("serve", "-h"), ("help", "serve"), ("serve", "-h", "extra")]
)
def test_serve_help_prints_help_and_starts_nothing(args: tuple[str, ...], tmp_path: Path) -> None:
    port = free_port()
    result = _run(*args, env=_isolated_env(tmp_path, port))

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("Start the simulated ollama server")
    assert "Usage:\n  ollama-sim serve [flags]\n" in result.stdout
    assert http_json(f"http://127.0.0.1:{port}/")[0] == 0, "nothing listens"
    assert not list(tmp_path.iterdir()), "nothing written"


@pytest.mark.parametrize("args", [("--help",), ("-h",), ("help",), ()])
def test_help_lists_the_commands(args: tuple[str, ...]) -> None:
    result = _run(*args)

    assert result.returncode == 0
    assert "Usage:\n  ollama-sim [flags]\n  ollama-sim [command]\n" in result.stdout
    commands = result.stdout.split("Available Commands:\n", 1)[1].split("\n\n", 1)[0]
    assert [line.split()[0] for line in commands.splitlines()] == ["serve", "help"]
    assert "-v, --version" in result.stdout


@pytest.mark.parametrize("args", [("serve", "--help"), ("--help",)])
def test_help_lists_every_variable_the_simulator_reads(args: tuple[str, ...]) -> None:
    listed = _listed_variables(_run(*args).stdout)

    wanted = _variables_the_simulator_reads()
    assert {"OLLAMA_HOST", "OLLAMA_MODELS", "SIM_NUM_TOKENS", "SIM_EXTRA_MODELS"} <= wanted
    assert wanted <= listed.keys(), f"not in the help: {sorted(wanted - listed.keys())}"
    for name, line in listed.items():
        meaning = line.split(None, 1)[1]
        assert re.fullmatch(r"\S.* \(default \S.*\)", meaning), f"{name}: {line!r}"
        assert meaning.count("default") == 1, line
    assert "(default 0.01)" in listed["SIM_PULL_DELAY"]
    assert "(default 12)" in listed["SIM_NUM_TOKENS"]
    assert "(default 127.0.0.1:11434)" in listed["OLLAMA_HOST"]
    assert (
        "(default ${XDG_CACHE_HOME:-~/.cache}/ubiops-ollama-proxy/simulator-models)"
        in listed["OLLAMA_MODELS"]
    )


def test_help_says_where_models_go(tmp_path: Path) -> None:
    result = _run("serve", "--help", env=_isolated_env(tmp_path, free_port()))
    own = tmp_path / ".cache" / "ubiops-ollama-proxy" / "simulator-models"
    assert f"Models are kept in {own}:" in result.stdout

    given = _isolated_env(tmp_path, free_port()) | {"OLLAMA_MODELS": str(tmp_path / "m")}
    assert f"Models are kept in {tmp_path / 'm'}:" in _run("serve", "-h", env=given).stdout


def test_the_program_is_named_as_invoked(tmp_path: Path) -> None:
    command = simulator_command()
    if len(command) != 1:
        pytest.skip("no ollama-sim console script beside this interpreter")
    renamed = tmp_path / "my-sim"
    renamed.symlink_to(command[0])

    shown = _run("--help", command=[str(renamed)])
    assert "Usage:\n  my-sim [flags]\n  my-sim [command]\n" in shown.stdout
    assert "ollama-sim" not in shown.stdout
    assert "Usage:\n  my-sim serve [flags]" in _run("serve", "-h", command=[str(renamed)]).stdout
    failed = _run("pull", "x", command=[str(renamed)])
    assert failed.returncode == 1
    assert failed.stderr == 'Error: unknown command "pull" for "my-sim"\n' + (
        "Run 'my-sim --help' for usage.\n"
    )


@pytest.mark.parametrize(
    ("args", "error", "hint"),
    [
        (("serve", "now"), "accepts 0 arg(s), received 1", "ollama-sim serve"),
        (("serve", "--port", "1"), "unknown flag: --port", "ollama-sim serve"),
        (("--verbose",), "unknown flag: --verbose", "ollama-sim"),
    ],
)
def test_bad_arguments_are_usage_errors(args: tuple[str, ...], error: str, hint: str) -> None:
    result = _run(*args)

    assert result.returncode == 1
    assert result.stderr == f"Error: {error}\nRun '{hint} --help' for usage.\n"
    assert result.stdout == ""


def test_models_go_to_the_simulators_own_directory_by_default(tmp_path: Path) -> None:
    """Without OLLAMA_MODELS a pull lands in the cache, not in a real Ollama's ~/.ollama."""
    port = free_port()
    env = _isolated_env(tmp_path, port)
    with subprocess.Popen(
        [*simulator_command(), "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as proc:
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: http_json(f"{url}/")[0] == 200, START_TIMEOUT, "the simulator")
            status, _ = http_json(
                f"{url}/api/pull", method="POST", body={"model": "smollm2:135m", "stream": False}
            )
            assert status == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(START_TIMEOUT) == 0

    own = tmp_path / ".cache" / "ubiops-ollama-proxy" / "simulator-models"
    assert (own / "manifests/registry.ollama.ai/library/smollm2/135m").is_file()
    assert not (tmp_path / ".ollama").exists()


def test_version() -> None:
    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout == f"ollama version is {VERSION}\n"


def test_unknown_command_is_a_usage_error() -> None:
    result = _run("pull", "smollm2")
    assert result.returncode == 1
    assert result.stderr == (
        'Error: unknown command "pull" for "ollama-sim"\nRun \'ollama-sim --help\' for usage.\n'
    )


def test_no_arguments_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([], prog="sim") == 0
    assert "Usage:\n  sim [flags]" in capsys.readouterr().out


def test_port_in_use_fails_like_ollama() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run("serve", env={"OLLAMA_HOST": f"127.0.0.1:{port}", "PATH": "/usr/bin"})
    assert result.returncode == 1
    assert f"Error: listen tcp 127.0.0.1:{port}: bind: address already in use" in result.stderr


def test_bad_setting_fails_at_start() -> None:
    result = _run("serve", env={"SIM_NUM_TOKENS": "many", "OLLAMA_HOST": "127.0.0.1:1"})
    assert result.returncode == 1
    assert "SIM_NUM_TOKENS" in result.stderr
