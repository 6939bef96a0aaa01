"""The supervisor and proxy in front of a real ``ollama`` executable, when one is installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from proxy.testing.net import free_port

pytestmark = [
    pytest.mark.real_ollama,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("ollama") is None, reason="no `ollama` on PATH"),
]

READY_TIMEOUT = 60.0
EXIT_TIMEOUT = 30.0


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_real_ollama_becomes_ready_and_is_proxied(tmp_path: os.PathLike[str]) -> None:
    port = free_port()
    env = {
        **os.environ,
        "OLLAMA_BIN": "ollama",
        "OLLAMA_INTERNAL_HOST": f"127.0.0.1:{free_port()}",
        "OLLAMA_MODELS": str(tmp_path),
        "OLLAMA_CHAT_MODELS": "",
        "OLLAMA_EMBEDDING_MODELS": "",
        "PROXY_PORT": str(port),
    }
    proxy = subprocess.Popen([sys.executable, "-m", "proxy", "serve"], env=env)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        status = 0
        while time.monotonic() < deadline:
            try:
                status, _ = _get(f"http://127.0.0.1:{port}/readyz")
            except OSError:
                status = 0
            if status == 200:
                break
            time.sleep(0.1)
        assert status == 200, "the proxy never reported ready in front of the real ollama"
        status, body = _get(f"http://127.0.0.1:{port}/api/version")
        assert status == 200
        assert "version" in json.loads(body)
    finally:
        proxy.send_signal(signal.SIGTERM)
        assert proxy.wait(EXIT_TIMEOUT) == 0
