"""``python -m proxy serve`` on a port that is taken: one error line that names PROXY_PORT."""

from __future__ import annotations

import errno
import json
import socket
from pathlib import Path

import pytest

from proxy.server import _listen_hint
from proxy.testing.harness import proxy_env

from .helpers import run_cli

pytestmark = pytest.mark.slow


def test_a_port_in_use_exits_1_with_one_line_suggesting_proxy_port(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = proxy_env(tmp_path, PROXY_PORT=str(port))  # no key: the proxy binds 127.0.0.1
        result = run_cli("serve", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    output = (result.stdout + result.stderr).splitlines()
    events = [json.loads(line) for line in output if line.startswith("{")]
    errors = [event for event in events if event.get("level") == "error"]
    assert len(errors) == 1, errors
    line = json.dumps(errors[0])
    assert errors[0]["port"] == port
    assert "in use" in line
    assert "PROXY_PORT" in line


def test_the_hint_names_ollama_on_its_default_port() -> None:
    in_use = OSError(errno.EADDRINUSE, "address already in use")
    assert "Ollama" in _listen_hint(in_use, 11434)["hint"]
    assert "Ollama" not in _listen_hint(in_use, 8080)["hint"]
    assert _listen_hint(OSError(errno.EACCES, "permission denied"), 80) == {}
