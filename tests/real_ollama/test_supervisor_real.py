"""The supervisor in front of the real ``ollama`` with no model configured: ready, proxied, stopped.

Moved from ``tests/supervisor``; it uses the executable of ``scripts/real-ollama.sh`` (the
``real_ollama`` session fixture) and an empty models directory of its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.real_ollama.support import RealOllama, get, proxy, terminate

pytestmark = [
    pytest.mark.real_ollama,
    pytest.mark.slow,
    # Fixture setup (a build in CI) has its own deadlines; each test body gets this one.
    pytest.mark.timeout(120, func_only=True),
]


def test_real_ollama_becomes_ready_and_is_proxied(real_ollama: RealOllama, tmp_path: Path) -> None:
    empty = tmp_path / "models"
    empty.mkdir()
    server = proxy(
        real_ollama, tmp_path, models=empty, OLLAMA_CHAT_MODELS="", OLLAMA_EMBEDDING_MODELS=""
    )
    server.start()
    try:
        status, body = get(server, "/api/version")
        assert status == 200, body
        assert body["version"] == "0.24.0", body
        status, body = get(server, "/api/tags")
        assert status == 200, body
        assert body["models"] == [], body
    except BaseException:
        server.stop()
        raise
    exit_status, left = terminate(server)
    assert exit_status == 0, server.log_tail()
    assert left == [], f"processes left after SIGTERM: {left}"
