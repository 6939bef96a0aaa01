"""The deployment package through UbiOps' own local runner, ``ubiops.utils.run_local``.

Process 0 runs in a subprocess (it owns the proxy and must outlive the others); processes 1
and 2 run in threads of the test, started at the same time, and block until the proxy is ready.
When process 0 ends without ``stop()`` its proxy and Ollama die with it (parent-death signal).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletionChunk
from ubiops.utils import run_local

from proxy.testing.harness import wait_until
from proxy.testing.simulator import expected_text
from tests.deployment.conftest import PACKAGE_DIR, sim_env

pytestmark = pytest.mark.slow

START_DELAY = "1.5"
NUM_TOKENS = 10
RUN_TIMEOUT = 60.0
EXIT_TIMEOUT = 20.0

CHAT = {
    "model": "ubiops-deployment/ollama-multi-model-server/v1/smollm2:135m",
    "messages": [{"role": "user", "content": "How is the weather?"}],
    "stream": True,
}

PROCESS_0 = textwrap.dedent(
    """
    import json, os, sys
    from ubiops.utils import run_local
    init = {"deployment": "ollama-multi-model-server", "version": "v1", "process_id": 0,
            "input_type": "plain", "output_type": "plain"}
    chunks = []
    request = {"id": "r0", "request_mode": "express", "streaming_update": chunks.append}
    output = run_local(sys.argv[1], sys.argv[2], init_context=init, request_context=request)
    with open(sys.argv[3] + ".tmp", "w") as result:
        json.dump({"output": output, "chunks": chunks}, result)
    os.replace(sys.argv[3] + ".tmp", sys.argv[3])
    sys.stdin.readline()
    """
)


def _init(process_id: int) -> dict[str, Any]:
    return {
        "deployment": "ollama-multi-model-server",
        "version": "v1",
        "process_id": process_id,
        "input_type": "plain",
        "output_type": "plain",
    }


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_three_processes_through_run_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = sim_env(tmp_path, SIM_START_DELAY=START_DELAY, SIM_NUM_TOKENS=str(NUM_TOKENS))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result_file = tmp_path / "process-0.json"
    results: dict[int, Any] = {}
    updates: list[str] = []

    def serve(process_id: int, data: Any) -> None:
        context = {"id": f"r{process_id}", "request_mode": "express"}
        context["streaming_update"] = updates.append  # type: ignore[assignment]
        try:
            results[process_id] = run_local(
                str(PACKAGE_DIR), data, init_context=_init(process_id), request_context=context
            )
        except Exception as exc:
            results[process_id] = exc

    log_file = (tmp_path / "process-0.log").open("w")
    process_0 = subprocess.Popen(
        [sys.executable, "-c", PROCESS_0, str(PACKAGE_DIR), json.dumps(CHAT), str(result_file)],
        stdin=subprocess.PIPE,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
        text=True,
    )
    tree: list[psutil.Process] = []
    try:
        threads = [
            threading.Thread(target=serve, args=(1, json.dumps(CHAT))),
            threading.Thread(
                target=serve, args=(2, {"model": "all-minilm:l6-v2", "input": ["a", "b"]})
            ),
        ]
        for thread in threads:
            thread.start()
        wait_until(result_file.exists, RUN_TIMEOUT, "process 0 to answer its request")
        first = json.loads(result_file.read_text())
        for thread in threads:
            thread.join(RUN_TIMEOUT)
            assert not thread.is_alive(), "a run_local call did not finish"

        expected = expected_text("smollm2:135m", CHAT["messages"], NUM_TOKENS)  # type: ignore[arg-type]
        for output, chunks in ((first["output"], first["chunks"]), (results[1], updates)):
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
                init_context=_init(1),
                request_context={"id": "r3", "streaming_update": updates.append},
            )
        with pytest.raises(Exception, match="not valid JSON"):
            run_local(str(PACKAGE_DIR), "{oops", init_context=_init(2))

        tree = psutil.Process(process_0.pid).children(recursive=True)
        assert len(tree) >= 2, "process 0 runs the proxy, which runs Ollama"
    finally:
        if process_0.poll() is None:
            process_0.communicate("\n", timeout=RUN_TIMEOUT)
        log_file.close()
    assert process_0.returncode == 0
    wait_until(lambda: all(_gone(p) for p in tree), EXIT_TIMEOUT, "the proxy and Ollama to exit")
