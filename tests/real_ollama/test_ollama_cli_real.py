"""The stock ``ollama`` command-line client in front of the proxy, with the real models.

The CLI cannot send a key (it has no option for an ``Authorization`` header), so it works where
the proxy asks for none: on loopback without ``PROXY_API_KEY``. There it lists, shows and runs
the catalog's models as against Ollama itself, and model management is refused with the
proxy's reason. A proxy with a key refuses it.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.testing.services import ProxyProcess
from tests.real_ollama.support import (
    CHAT_MODEL,
    EMBEDDING_MODEL,
    PROMPT,
    RealOllama,
    assert_real_text,
    proxy,
    running,
)

pytestmark = [
    pytest.mark.real_ollama,
    pytest.mark.slow,
    pytest.mark.timeout(120, func_only=True),
]

CLI_TIMEOUT = 60.0
"""One CLI command."""
RUN_BUDGET = 20.0
"""How long ``ollama run`` may generate: the CLI has no way to cap an answer's length and
SmolLM2 sometimes rambles, so what it has printed by then is what is checked."""
_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
"""The spinner and cursor codes the CLI writes even to a pipe."""


@pytest.fixture(scope="module")
def open_proxy(
    real_ollama: RealOllama, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    """The proxy without a key: it listens on loopback only and asks for none."""
    with running(proxy(real_ollama, tmp_path_factory.mktemp("cli"), PROXY_API_KEY="")) as server:
        yield server


def ollama_cli(
    real: RealOllama, server: ProxyProcess, home: Path, *args: str, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """``ollama ARGS`` with ``OLLAMA_HOST`` at the proxy (and a home of its own); its output
    without terminal codes.

    Raises:
        subprocess.TimeoutExpired: it ran longer than ``timeout`` (and was killed).
    """
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "OLLAMA_HOST": server.url.removeprefix("http://"),
    }
    done = subprocess.run(
        [str(real.bin), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    done.stdout, done.stderr = printed(done.stdout), printed(done.stderr)
    return done


def printed(output: str | bytes | None) -> str:
    """What the CLI printed, as text without terminal codes (a timeout leaves bytes or None)."""
    text = output.decode(errors="replace") if isinstance(output, bytes) else output or ""
    return _TERMINAL_CODES.sub("", text)


def test_list_show_run_and_ps(
    real_ollama: RealOllama, open_proxy: ProxyProcess, tmp_path: Path
) -> None:
    listed = ollama_cli(real_ollama, open_proxy, tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines()[1:] if line.strip()]
    assert sorted(names) == sorted([CHAT_MODEL, EMBEDDING_MODEL])

    shown = ollama_cli(real_ollama, open_proxy, tmp_path, "show", CHAT_MODEL)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"architecture\s+llama", shown.stdout), shown.stdout

    try:
        answer = ollama_cli(
            real_ollama, open_proxy, tmp_path, "run", CHAT_MODEL, PROMPT, timeout=RUN_BUDGET
        )
    except subprocess.TimeoutExpired as cut:  # still talking: judge what it said so far
        text = printed(cut.stdout)
    else:
        assert answer.returncode == 0, answer.stderr
        text = answer.stdout
    assert_real_text(text)

    loaded = ollama_cli(real_ollama, open_proxy, tmp_path, "ps")
    assert loaded.returncode == 0, loaded.stderr
    assert CHAT_MODEL in loaded.stdout


def test_model_management_is_refused_with_the_proxys_reason(
    real_ollama: RealOllama, open_proxy: ProxyProcess, tmp_path: Path
) -> None:
    for command in (["pull", CHAT_MODEL], ["rm", CHAT_MODEL], ["cp", CHAT_MODEL, "copy:1"]):
        done = ollama_cli(real_ollama, open_proxy, tmp_path, *command)
        assert done.returncode != 0, command
        assert "disabled" in done.stderr, done.stderr
        assert "PROXY_ADMIN_KEY" in done.stderr, done.stderr
    listed = ollama_cli(real_ollama, open_proxy, tmp_path, "list")
    assert CHAT_MODEL in listed.stdout
    assert "copy:1" not in listed.stdout


def test_a_proxy_with_a_key_refuses_the_cli(real_ollama: RealOllama, tmp_path: Path) -> None:
    """The CLI's first request (``HEAD /``, its heartbeat) is refused: it has no way to send a
    key, and a HEAD answer has no body to carry the reason, so it prints Ollama's generic
    error."""
    with running(proxy(real_ollama, tmp_path / "keyed")) as keyed:
        done = ollama_cli(real_ollama, keyed, tmp_path, "list")
        refused = [
            event
            for event in keyed.events()
            if event.get("event") == "request" and event.get("method") == "HEAD"
        ]
    assert done.returncode != 0
    assert done.stdout == "", "no listing"
    assert [(event["path"], event["status"]) for event in refused] == [("/", 401)]
