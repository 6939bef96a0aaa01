"""Fixtures for the supervisor suite: the simulator as OLLAMA_BIN, real subprocesses, real signals.

Every process a test starts is killed (with its whole tree) when the test ends, whatever happens.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import (
    EXIT_TIMEOUT,
    REPO,
    SIM_BIN,
    Instance,
    Proxy,
    kill_tree,
    sims_using,
)


@pytest.fixture
def instance(tmp_path: Path) -> Instance:
    """A fresh instance layout with a base environment (the simulator as OLLAMA_BIN)."""
    assert SIM_BIN.exists(), f"the simulator executable is missing: {SIM_BIN}"
    inst = Instance(tmp=tmp_path)
    inst.models_dir.mkdir()
    inst.state_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "SIM_", "PROXY_"))}
    env.update(
        OLLAMA_BIN=str(SIM_BIN),
        OLLAMA_INTERNAL_HOST=f"127.0.0.1:{inst.ollama_port}",
        OLLAMA_MODELS=str(inst.models_dir),
        OLLAMA_CHAT_MODELS="smollm2:135m",
        OLLAMA_EMBEDDING_MODELS="all-minilm",
        PROXY_PORT=str(inst.proxy_port),
        LOG_FORMAT="json",
        LOG_LEVEL="info",
        SIM_STATE_DIR=str(inst.state_dir),
        SIM_PULL_DELAY="0.001",
        SIM_PULL_STEPS="3",
        PULL_RETRIES="3",
        SHUTDOWN_GRACE="5",
    )
    inst.env = env
    return inst


@pytest.fixture
def start_proxy(instance: Instance) -> Iterator[Callable[..., Proxy]]:
    """Factory: ``start_proxy("serve", VAR=value, ...)`` runs ``python -m proxy``; all are
    killed, with their trees, at the end of the test."""
    started: list[Proxy] = []

    def start(command: str = "serve", *args: str, **env: str) -> Proxy:
        log_path = instance.tmp / f"proxy-{len(started)}.log"
        with log_path.open("wb") as log_file:
            popen = subprocess.Popen(
                [sys.executable, "-m", "proxy", command, *args],
                env={**instance.env, **env},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        proxy = Proxy(popen=popen, instance=instance, log_path=log_path)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        kill_tree(proxy.pid)
        proxy.popen.wait(EXIT_TIMEOUT)
    for proc in sims_using(instance.models_dir):
        proc.kill()
