"""The deployment package in the local 3-process UbiOps emulation, with the real proxy and the
simulator: load (every streamed update checked), then the proxy child of process 0 SIGKILLed
under in-flight requests: clear errors everywhere, the watcher brings it back, nothing pulled
again, nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from proxy.testing.simulator import expected_tokens
from proxy.testing.ubiops_instance import GENERIC_ERROR, RequestResult, UbiOpsInstance

from .helpers import (
    ADMIN_KEY,
    API_KEY,
    CHAT,
    EMBED,
    PACKAGE_DIR,
    TALLY,
    alive,
    base_env,
    check_embedding,
    check_sse_chat,
    established,
    fds_redirected,
    tcp_connections,
    user_messages,
    wait_until,
)

pytestmark = pytest.mark.reliability

PROCESSES = 3
REQUESTS = 60
"""Requests of the load run (each process serves one at a time)."""
SHORT_TOKENS = 12
"""max_tokens of the load requests."""
LONG_TOKENS = 60
"""SIM_NUM_TOKENS: what the kill test's requests get (about LONG_TOKENS x TOKEN_DELAY s)."""
TOKEN_DELAY = 0.025
STARTED_TIMEOUT = 60.0
REQUEST_TIMEOUT = 30.0
RECOVERY_TIMEOUT = 45.0
RSS_MARGIN = 6 * 1024 * 1024


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return base_env(
        tmp_path_factory.mktemp("ubiops"),
        SIM_TOKEN_DELAY=str(TOKEN_DELAY),
        SIM_NUM_TOKENS=str(LONG_TOKENS),
        SHUTDOWN_GRACE="2",
        LOG_FORMAT="json",
    )


@pytest.fixture(scope="module")
def log_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where every process of the instance writes (stdout and stderr)."""
    return tmp_path_factory.mktemp("ubiops-logs") / "ubiops-instance.log"


@pytest.fixture(scope="module")
def instance(env: dict[str, str], log_path: Path) -> Iterator[UbiOpsInstance]:
    ubiops = UbiOpsInstance(PACKAGE_DIR, processes=PROCESSES, env=env)
    with fds_redirected(log_path):
        ubiops.start()
    try:
        ubiops.wait_started(STARTED_TIMEOUT)
        yield ubiops
    finally:
        tree = _descendants(ubiops.pids)
        ubiops.stop()
        wait_until(lambda: not any(alive(p.pid) for p in tree), 20.0, "the instance to exit")


def _descendants(pids: list[int]) -> list[psutil.Process]:
    found: list[psutil.Process] = []
    for pid in pids:
        try:
            found += [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return found


def _proxy_of(instance: UbiOpsInstance) -> psutil.Process | None:
    try:
        children = psutil.Process(instance.pids[0]).children()
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            if child.cmdline()[-2:] == ["proxy", "serve"] and alive(child.pid):
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def _items(tag: str) -> list[tuple[str, Any]]:
    """(kind, request) pairs: chat streamed and whole, completion, embeddings, text and dicts."""
    items: list[tuple[str, Any]] = []
    for i in range(REQUESTS):
        kind = ("chat-stream", "chat", "completion", "embed", "completion-stream")[i % 5]
        text = f"ubiops {tag} {i}"
        if kind == "chat-stream":
            body = {
                "model": CHAT,
                "messages": user_messages(text),
                "stream": True,
                "max_tokens": SHORT_TOKENS,
            }
            items.append((kind, json.dumps(body)))
        elif kind == "chat":
            items.append(
                (kind, {"model": CHAT, "messages": user_messages(text), "max_tokens": SHORT_TOKENS})
            )
        elif kind == "completion":
            items.append((kind, {"model": CHAT, "prompt": text, "max_tokens": SHORT_TOKENS}))
        elif kind == "completion-stream":
            body = {"model": CHAT, "prompt": text, "stream": True, "max_tokens": SHORT_TOKENS}
            items.append((kind, body))
        else:
            items.append((kind, json.dumps({"model": EMBED, "input": [text, text + " b"]})))
    return items


def _check(kind: str, request: Any, result: RequestResult) -> int:
    """Check one result against the simulator's output; the number of chunks checked."""
    assert result.ok, result.error
    body = json.loads(request) if isinstance(request, str) else request
    texts = [text for _, text in result.updates]
    if kind == "chat-stream":
        # UbiOps' request path asks for the usage its token metrics count.
        checked = check_sse_chat([*texts, "[DONE]"], body["messages"], SHORT_TOKENS, usage=True) - 1
        assert result.output == "[" + ",".join(texts) + "]", "the output is the chunks verbatim"
        return checked
    if kind == "completion-stream":
        tokens = expected_tokens(CHAT, body["prompt"], SHORT_TOKENS)
        got = [json.loads(t)["choices"][0]["text"] for t in texts]
        assert got == [*tokens, ""], got
        return len(texts)
    assert texts == [], "a whole answer sends no streaming updates"
    output = json.loads(result.output)
    if kind == "chat":
        content = output["choices"][0]["message"]["content"]
        assert content == "".join(expected_tokens(CHAT, body["messages"], SHORT_TOKENS))
    elif kind == "completion":
        assert output["choices"][0]["text"] == "".join(
            expected_tokens(CHAT, body["prompt"], SHORT_TOKENS)
        )
    else:
        for item, text in zip(output["data"], body["input"], strict=True):
            check_embedding(item["embedding"], text)
    return 1


def _run(instance: UbiOpsInstance, tag: str) -> int:
    items = _items(tag)
    results = instance.batch([request for _, request in items], timeout=REQUEST_TIMEOUT * 4)
    assert {r.process_id for r in results} == set(range(PROCESSES)), "spread over all processes"
    return sum(_check(kind, request, r) for (kind, request), r in zip(items, results, strict=True))


def test_load_through_the_ubiops_processes(instance: UbiOpsInstance, env: dict[str, str]) -> None:
    proxy = _proxy_of(instance)
    assert proxy is not None
    port = int(env["PROXY_PORT"])
    warm_chunks = _run(instance, "warm")
    rss_before = proxy.memory_info().rss
    fds_before = proxy.num_fds()

    chunks = _run(instance, "measured")

    TALLY.ubiops_requests += 2 * REQUESTS
    TALLY.ubiops_chunks += warm_chunks + chunks
    assert proxy.memory_info().rss - rss_before <= RSS_MARGIN
    clients = established(tcp_connections(proxy.pid, port, remote=False))
    assert len(clients) <= PROCESSES, "one keep-alive connection per request process"
    assert proxy.num_fds() <= fds_before + 4


def test_keys_in_request_bodies_stay_out_of_the_instance_log(
    instance: UbiOpsInstance, log_path: Path
) -> None:
    for secret in (API_KEY, ADMIN_KEY):
        bad = instance.request({"model": secret, "messages": user_messages("x")}, timeout=30)
        assert bad.error is not None
        assert secret not in bad.error
        streamed = instance.request(
            json.dumps(
                {
                    "model": CHAT,
                    "messages": user_messages(secret),
                    "stream": True,
                    "max_tokens": SHORT_TOKENS,
                }
            ),
            timeout=REQUEST_TIMEOUT,
        )
        assert streamed.ok, streamed.error
    time.sleep(0.3)
    leaks = [line[:200] for line in log_path.read_text().splitlines() if API_KEY in line]
    leaks += [line[:200] for line in log_path.read_text().splitlines() if ADMIN_KEY in line]
    assert not leaks, leaks[:3]


def _stream_request(text: str) -> dict[str, Any]:
    return {"model": CHAT, "messages": user_messages(text), "stream": True}


def test_proxy_killed_under_the_request_processes(
    instance: UbiOpsInstance, env: dict[str, str]
) -> None:
    proxy = _proxy_of(instance)
    assert proxy is not None
    old_tree = proxy.children(recursive=True)
    assert old_tree, "the proxy runs Ollama"
    models_dir = Path(env["OLLAMA_MODELS"])
    pulls_log = Path(env["SIM_STATE_DIR"]) / "pulls.log"
    downloads = pulls_log.read_text().count('"downloaded": true')

    # Three long streams in flight, one per process; kill the proxy once each has chunks.
    requests = [_stream_request(f"kill {i}") for i in range(PROCESSES)]
    updates = [threading.Event() for _ in range(PROCESSES)]
    results: list[RequestResult | None] = [None] * PROCESSES

    def serve(i: int) -> None:
        def on_update(_t: float, _text: str) -> None:
            updates[i].set()

        results[i] = instance.request(requests[i], timeout=REQUEST_TIMEOUT, on_update=on_update)

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(PROCESSES)]
    for thread in threads:
        thread.start()
    for event in updates:
        assert event.wait(REQUEST_TIMEOUT), "every stream started"
    os.kill(proxy.pid, signal.SIGKILL)
    for thread in threads:
        thread.join(REQUEST_TIMEOUT)
    killed_at = time.monotonic()

    finished = [r for r in results if r is not None]
    assert len(finished) == PROCESSES
    assert {r.process_id for r in finished} == set(range(PROCESSES))
    for request, result in zip(requests, finished, strict=True):
        assert result.error is not None, "a stream cut by the proxy's death is not a success"
        assert result.error != GENERIC_ERROR, result.error
        assert "model server" in result.error, result.error
        tokens = expected_tokens(CHAT, request["messages"], LONG_TOKENS)
        got = [json.loads(t)["choices"][0]["delta"].get("content") for _, t in result.updates]
        assert got == tokens[: len(got)], "what arrived before the error is an exact prefix"
        assert len(got) < len(tokens)

    # Meanwhile every process fails clearly; then all succeed again.
    errors: list[tuple[int, str]] = []

    def recovered() -> bool:
        batch = instance.batch(
            [_stream_request("after") for _ in range(PROCESSES)], timeout=REQUEST_TIMEOUT
        )
        errors.extend((r.process_id, r.error) for r in batch if r.error is not None)
        return all(r.ok for r in batch)

    wait_until(recovered, RECOVERY_TIMEOUT, "requests to succeed after the proxy restart")
    recovery = time.monotonic() - killed_at
    # The client cannot reach the restarting proxy, then the proxy says what it waits for.
    assert all(e and e != GENERIC_ERROR for _, e in errors), errors
    restarted = _proxy_of(instance)
    assert restarted is not None
    assert restarted.pid != proxy.pid
    wait_until(
        lambda: not any(alive(p.pid) for p in old_tree), 15.0, "the killed proxy's Ollama to exit"
    )
    sims = [p for p in restarted.children(recursive=True) if "ollama-sim" in " ".join(p.cmdline())]
    assert len(sims) == 1, "exactly one Ollama runs for this models directory"
    assert sims[0].environ().get("OLLAMA_MODELS") == str(models_dir)
    assert pulls_log.read_text().count('"downloaded": true') == downloads, "nothing re-downloaded"

    results_after = instance.batch(
        [request for _, request in _items("after-restart")[:15]], timeout=REQUEST_TIMEOUT * 2
    )
    for (kind, request), result in zip(_items("after-restart")[:15], results_after, strict=True):
        TALLY.ubiops_chunks += _check(kind, request, result)
    TALLY.ubiops_requests += len(results_after)
    TALLY.fault("UbiOps: proxy SIGKILL under 3 processes", f"serving again in {recovery:.1f}s")
