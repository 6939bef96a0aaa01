"""The deployment package through UbiOps' own local runner, ``ubiops.utils.run_local``.

Process 0 runs in a subprocess (it owns the proxy and must outlive the others); processes 1
and 2 run in threads of the test, started at the same time, and block until the proxy is ready.
When process 0 ends without ``stop()`` its proxy and Ollama die with it (parent-death signal).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletionChunk
from ubiops.utils import run_local

from proxy.testing.simulator import expected_text
from tests.deployment.conftest import PACKAGE_DIR, sim_env
from tests.run_local import DEPLOYMENT, init_context, process_zero

pytestmark = pytest.mark.slow

START_DELAY = "1.5"
NUM_TOKENS = 10
RUN_TIMEOUT = 60.0
EXIT_TIMEOUT = 20.0

CHAT = {
    "model": f"ubiops-deployment/{DEPLOYMENT}/v1/smollm2:135m",
    "messages": [{"role": "user", "content": "How is the weather?"}],
    "stream": True,
}


def test_three_processes_through_run_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = sim_env(tmp_path, SIM_START_DELAY=START_DELAY, SIM_NUM_TOKENS=str(NUM_TOKENS))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    results: dict[int, Any] = {}
    updates: list[str] = []

    def serve(process_id: int, data: Any) -> None:
        context = {"id": f"r{process_id}", "request_mode": "express"}
        context["streaming_update"] = updates.append  # type: ignore[assignment]
        try:
            results[process_id] = run_local(
                str(PACKAGE_DIR),
                data,
                init_context=init_context(process_id),
                request_context=context,
            )
        except Exception as exc:
            results[process_id] = exc

    with process_zero(
        PACKAGE_DIR, json.dumps(CHAT), env, tmp_path, exit_timeout=EXIT_TIMEOUT
    ) as process_0:
        threads = [
            threading.Thread(target=serve, args=(1, json.dumps(CHAT))),
            threading.Thread(
                target=serve, args=(2, {"model": "all-minilm:l6-v2", "input": ["a", "b"]})
            ),
        ]
        for thread in threads:
            thread.start()
        first = process_0.answer(RUN_TIMEOUT)
        for thread in threads:
            thread.join(RUN_TIMEOUT)
            assert not thread.is_alive(), "a run_local call did not finish"

        expected = expected_text("smollm2:135m", CHAT["messages"], NUM_TOKENS)  # type: ignore[arg-type]
        for output, chunks in (first, (results[1], updates)):
            assert isinstance(output, str), output
            assert output == "[" + ",".join(chunks) + "]"
            parsed = [ChatCompletionChunk.model_validate_json(text) for text in chunks]
            assert "".join(c.choices[0].delta.content or "" for c in parsed if c.choices) == (
                expected
            )
        embedding = CreateEmbeddingResponse.model_validate_json(results[2])
        assert [len(item.embedding) for item in embedding.data] == [384, 384]

        with pytest.raises(Exception, match="available models: smollm2:135m, all-minilm:l6-v2"):
            run_local(
                str(PACKAGE_DIR),
                {"model": "gpt-4", "messages": []},
                init_context=init_context(1),
                request_context={"id": "r3", "streaming_update": updates.append},
            )
        with pytest.raises(Exception, match="not valid JSON"):
            run_local(str(PACKAGE_DIR), "{oops", init_context=init_context(2))

        assert len(process_0.children()) >= 2, "process 0 runs the proxy, which runs Ollama"
