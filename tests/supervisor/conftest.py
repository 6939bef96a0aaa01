"""Fixtures for the supervisor suite: the simulator as OLLAMA_BIN, real subprocesses, real signals.

Every process a test starts is killed (with its whole tree) when the test ends, whatever happens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from proxy.testing.harness import proxy_env
from proxy.testing.services import ProxyProcess

from .helpers import sims_using


@pytest.fixture
def instance(tmp_path: Path) -> ProxyProcess:
    """An instance's proxy, not started: its environment, URL and directories."""
    env = proxy_env(tmp_path, OLLAMA_EMBEDDING_MODELS="all-minilm", PULL_RETRIES="3")
    return ProxyProcess(env, log_path=tmp_path / "proxy.log")


@pytest.fixture
def start_proxy(instance: ProxyProcess, tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """Factory: ``start_proxy("serve", VAR=value, ...)`` spawns ``python -m proxy`` in the
    instance; all are killed, with their trees, at the end of the test."""
    started: list[ProxyProcess] = []

    def start(command: str = "serve", *args: str, **env: str) -> ProxyProcess:
        log_path = tmp_path / f"proxy-{len(started)}.log"
        proxy = ProxyProcess({**instance.env, **env}, command=(command, *args), log_path=log_path)
        started.append(proxy.spawn())
        return proxy

    yield start
    for proxy in started:
        proxy.stop(grace=0)
    for proc in sims_using(instance.models_dir):
        proc.kill()
