"""The supervisor in front of the real ``ollama`` with no model configured: ready, proxied, stopped.

Moved from ``tests/supervisor``; it now uses the executable of ``scripts/real-ollama.sh`` (the
``real_ollama`` session fixture) and an empty models directory of its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.real_ollama.support import (
    RealOllama,
    http_get,
    kill_tree,
    start_proxy,
    terminate,
    wait_ready,
)

pytestmark = [
    pytest.mark.real_ollama,
    pytest.mark.slow,
    # Fixture setup (a build in CI) has its own deadlines; each test body gets this one.
    pytest.mark.timeout(120, func_only=True),
]


def test_real_ollama_becomes_ready_and_is_proxied(real_ollama: RealOllama, tmp_path: Path) -> None:
    proxy = start_proxy(
        real_ollama,
        tmp_path,
        chat_models="",
        embedding_models="",
        models_dir=tmp_path / "models",
    )
    try:
        ready = wait_ready(proxy)
        assert ready is not None
        status, body = http_get(f"{proxy.url}/api/version")
        assert status == 200, body
        assert body["version"], body
        status, body = http_get(f"{proxy.url}/api/tags")
        assert status == 200, body
        assert body["models"] == [], body
    except BaseException:
        kill_tree(proxy)
        raise
    exit_status, left = terminate(proxy)
    assert exit_status == 0, proxy.log_tail()
    assert left == [], f"processes left after SIGTERM: {left}"
