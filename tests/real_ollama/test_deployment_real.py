"""The deployment package with the real ``ollama``: through UbiOps' own local runner
(``ubiops.utils.run_local``) and through the local instance emulation
(:class:`~proxy.testing.ubiops_instance.UbiOpsInstance`), a real chat answer streamed via
``streaming_update`` and a real embedding each way.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletionChunk
from ubiops.utils import run_local

from proxy.testing.harness import wait_until
from proxy.testing.ubiops_instance import UbiOpsInstance
from tests.process_tools import alive
from tests.real_ollama.support import (
    CHAT_MODEL,
    EMBEDDING_MODEL,
    EXIT_TIMEOUT,
    PROMPT,
    READY_TIMEOUT,
    RealOllama,
    real_env,
)
from tests.run_local import DEPLOYMENT, init_context, process_zero

pytestmark = [
    pytest.mark.real_ollama,
    pytest.mark.slow,
    pytest.mark.timeout(300, func_only=True),
]

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "deployment_package"
REQUEST_TIMEOUT = 120.0
"""One request, a real generation included."""
CHAT = {
    "model": f"ubiops-deployment/{DEPLOYMENT}/v1/{CHAT_MODEL}",
    "messages": [{"role": "user", "content": PROMPT}],
    "max_tokens": 24,
    "stream": True,
}
EMBED = {"model": EMBEDDING_MODEL, "input": ["The cat sits on the mat", "A kitten on a rug"]}


def _assert_real_stream(chunks: Sequence[str]) -> None:
    """Several ``chat.completion.chunk`` updates whose text is words."""
    parsed = [ChatCompletionChunk.model_validate_json(text) for text in chunks]
    text = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
    assert len([c for c in parsed if c.choices and c.choices[0].delta.content]) > 1, chunks
    assert any(word.isalpha() for word in text.replace(",", " ").replace(".", " ").split()), text
    assert all(c.object == "chat.completion.chunk" for c in parsed)


def _assert_real_embedding(output: str) -> None:
    embedding = CreateEmbeddingResponse.model_validate_json(output)
    assert [len(item.embedding) for item in embedding.data] == [384, 384]


def test_run_local_streams_a_real_answer(
    real_ollama: RealOllama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = real_env(real_ollama, tmp_path, LOG_FORMAT="console")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    embedded: list[Any] = []

    def embed() -> None:  # process 1: waits for process 0's proxy, then embeds
        try:
            embedded.append(
                run_local(str(PACKAGE_DIR), json.dumps(EMBED), init_context=init_context(1))
            )
        except Exception as exc:
            embedded.append(exc)

    with process_zero(
        PACKAGE_DIR, json.dumps(CHAT), env, tmp_path, exit_timeout=EXIT_TIMEOUT
    ) as process_0:
        thread = threading.Thread(target=embed)
        thread.start()
        output, chunks = process_0.answer(READY_TIMEOUT)
        thread.join(REQUEST_TIMEOUT)
        assert not thread.is_alive(), "process 1's run_local did not finish"
        assert output == "[" + ",".join(chunks) + "]"
        _assert_real_stream(chunks)
        assert isinstance(embedded[0], str), embedded[0]
        _assert_real_embedding(embedded[0])
        tree = process_0.children()
        assert any(p.cmdline()[1:2] == ["serve"] for p in tree), "process 0 runs ollama"


def test_an_emulated_instance_streams_a_real_answer(
    real_ollama: RealOllama, tmp_path: Path
) -> None:
    env = real_env(real_ollama, tmp_path, LOG_FORMAT="console")
    instance = UbiOpsInstance(PACKAGE_DIR, processes=2, env=env)
    tree: list[psutil.Process] = []
    instance.start()
    try:
        instance.wait_started(READY_TIMEOUT)
        arrivals: list[float] = []
        chat = instance.request(
            json.dumps(CHAT),
            timeout=REQUEST_TIMEOUT,
            on_update=lambda t, _text: arrivals.append(t),
        )
        assert chat.ok, chat.error
        texts = [text for _, text in chat.updates]
        _assert_real_stream(texts)
        assert chat.output == "[" + ",".join(texts) + "]"
        assert arrivals == sorted(arrivals)
        embedding = instance.request(EMBED, timeout=REQUEST_TIMEOUT)
        assert embedding.ok, embedding.error
        _assert_real_embedding(embedding.output)
        unknown = instance.request({**CHAT, "model": "llama3"}, timeout=REQUEST_TIMEOUT)
        assert unknown.error is not None
        assert "available models" in unknown.error
        tree = [p for pid in instance.pids for p in psutil.Process(pid).children(recursive=True)]
        assert any(p.cmdline()[1:2] == ["serve"] for p in tree), "the instance runs ollama"
    finally:
        workers = [psutil.Process(pid) for pid in instance.pids if pid]
        instance.stop()
    wait_until(
        lambda: not any(alive(p.pid) for p in [*tree, *workers]),
        EXIT_TIMEOUT,
        "every process to exit",
    )
