"""Running ``python -m proxy serve`` in front of the real Ollama, for the real_ollama suites.

Self-contained on purpose (no helper of the other suites): a subprocess, its environment, a
readiness wait with a deadline, and a stop that checks every descendant is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from proxy.testing.harness import free_port

REPO = Path(__file__).resolve().parents[2]

CHAT_MODEL = "smollm2:135m"
EMBEDDING_MODEL = "all-minilm:l6-v2"
"""The tutorial's models, as ``scripts/real-ollama.sh`` creates them."""

API_KEY = "real-ollama-suite-key-0123456789"
"""The proxy's bearer key in these tests (16+ characters, as the proxy requires)."""

READY_TIMEOUT = 90.0
"""Real ``ollama serve`` started and both models loaded (a few seconds when the machine is idle)."""
EXIT_TIMEOUT = 30.0
"""SIGTERM to exit: the proxy drains, then stops Ollama and its runners."""
HTTP_TIMEOUT = 5.0
"""One probe request."""
POLL_INTERVAL = 0.1


@dataclass(frozen=True)
class RealOllama:
    """A real Ollama executable and a models directory holding both tutorial models."""

    bin: Path
    models: Path


@dataclass
class RunningProxy:
    """A ``python -m proxy serve`` subprocess; its output goes to ``log_path``."""

    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    env: dict[str, str] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def http_get(url: str, timeout: float = HTTP_TIMEOUT) -> tuple[int, Any]:
    """GET ``url`` with the API key; ``(status, parsed JSON)``, or ``(0, error)`` if unreachable."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {API_KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body.decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


def start_proxy(
    real: RealOllama,
    workdir: Path,
    *,
    chat_models: str,
    embedding_models: str,
    models_dir: Path | None = None,
    **extra: str,
) -> RunningProxy:
    """Start the proxy in front of ``real``'s executable; ``extra`` adds environment variables."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "OLLAMA_BIN": str(real.bin),
        "OLLAMA_MODELS": str(models_dir or real.models),
        "OLLAMA_INTERNAL_HOST": f"127.0.0.1:{free_port()}",
        "OLLAMA_CHAT_MODELS": chat_models,
        "OLLAMA_EMBEDDING_MODELS": embedding_models,
        # The models directory is a shared cache: Ollama must not prune blobs in it at start.
        "OLLAMA_NOPRUNE": "1",
        "PROXY_HOST": "127.0.0.1",
        "PROXY_PORT": str(port),
        "PROXY_API_KEY": API_KEY,
        "OLLAMA_START_TIMEOUT": "60",
        "PULL_RETRIES": "1",
        "LOG_FORMAT": "json",
        **extra,
    }
    log_path = workdir / "proxy.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return RunningProxy(popen=popen, port=port, log_path=log_path, env=env)


def wait_ready(proxy: RunningProxy, timeout: float = READY_TIMEOUT) -> Any:
    """Poll ``/readyz`` until 200 and return its JSON; fail with the log's tail otherwise."""
    deadline = time.monotonic() + timeout
    status, body = 0, None
    while time.monotonic() < deadline:
        if proxy.popen.poll() is not None:
            pytest.fail(
                f"the proxy exited with {proxy.popen.returncode} before it was ready:\n"
                f"{proxy.log_tail()}",
                pytrace=False,
            )
        status, body = http_get(f"{proxy.url}/readyz")
        if status == 200:
            return body
        time.sleep(POLL_INTERVAL)
    pytest.fail(
        f"the proxy was not ready within {timeout:g}s (last /readyz: {status} {body}):\n"
        f"{proxy.log_tail()}",
        pytrace=False,
    )


def descendants(pid: int) -> list[psutil.Process]:
    """Every live descendant of ``pid`` (``ollama serve``, its runners)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_tree(proxy: RunningProxy) -> None:
    """SIGKILL the proxy and every descendant; for teardown after a failure."""
    procs = descendants(proxy.popen.pid)
    with contextlib.suppress(ProcessLookupError):
        proxy.popen.kill()
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proxy.popen.wait(EXIT_TIMEOUT)


def terminate(proxy: RunningProxy, timeout: float = EXIT_TIMEOUT) -> tuple[int, list[str]]:
    """SIGTERM the proxy; its exit status and the descendants still alive once it has exited.

    The descendants are collected before the signal and looked at again after the exit, up to a
    short grace (a child that is already dying may take a moment to be reaped by init).
    """
    before = descendants(proxy.popen.pid)
    proxy.popen.send_signal(signal.SIGTERM)
    try:
        status = proxy.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proxy)
        pytest.fail(
            f"the proxy did not exit within {timeout:g}s of SIGTERM:\n{proxy.log_tail()}",
            pytrace=False,
        )
    deadline = time.monotonic() + 2.0
    left = [proc for proc in before if alive(proc)]
    while left and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
        left = [proc for proc in left if alive(proc)]
    names = []
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            names.append(f"{proc.pid} {' '.join(proc.cmdline())}")
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    return status, names
