"""The ``ollama-sim`` command line, run as a real executable."""

from __future__ import annotations

import socket
import subprocess

import pytest

from proxy.testing.harness import simulator_command
from proxy.testing.simulator import VERSION
from proxy.testing.simulator.__main__ import main


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*simulator_command(), *args], capture_output=True, text=True, timeout=20, env=env
    )


def test_version() -> None:
    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout == f"ollama version is {VERSION}\n"


def test_unknown_command_is_a_usage_error() -> None:
    result = _run("pull", "smollm2")
    assert result.returncode == 1
    assert 'Error: unknown command "pull" for "ollama"' in result.stderr


def test_no_arguments_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "serve" in capsys.readouterr().out


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
