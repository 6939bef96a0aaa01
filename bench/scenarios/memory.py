"""Scenario 7: the proxy's memory, idle and under many concurrent streams.

Method: a proxy in front of a simulator pacing 20 ms per token. Idle RSS is read after a few
warm-up requests (chat, embeddings, one stream) and a short pause; then the load generator runs
the scenario-3 load (64 concurrent 200-token streams, starts spread) while it samples the
proxy's RSS every 50 ms, keeping the peak. Only the proxy process is counted, not its Ollama
child. Rounds repeat the idle read and the loaded peak on the same process, so growth between
rounds would show a leak.
"""

from __future__ import annotations

import time

import psutil

from bench.context import SHORT_TOKENS, Bench, chat_body, embed_body
from bench.report import ScenarioResult, Target
from bench.stack import http_post

NAME = "memory"
TITLE = "Proxy memory (RSS), idle and under concurrent streams"

_MB = 1024 * 1024


def run(bench: Bench) -> ScenarioResult:
    result = ScenarioResult(NAME, TITLE)
    if bench.aa:
        result.skipped = "needs the proxy (not run in A/A mode)"
        return result
    p = bench.profile
    sim_env = {"SIM_TOKEN_DELAY": str(p.pace_delay_s), "SIM_NUM_TOKENS": str(p.pace_tokens)}
    idle: list[float] = []
    peak: list[float] = []
    with bench.stack(sim_env, name="memory") as stack:
        proxy = stack.proxy()
        for path, body in (
            ("/v1/chat/completions", chat_body(stream=False, max_tokens=SHORT_TOKENS)),
            ("/v1/embeddings", embed_body()),
            ("/v1/chat/completions", chat_body(stream=True)),
        ):
            http_post(f"{stack.proxy_url}{path}", body, proxy.headers)
        process = psutil.Process(stack.proxy_pid)
        spread = p.pace_tokens * p.pace_delay_s
        for _ in range(p.memory_rounds):
            time.sleep(0.5)
            idle.append(process.memory_info().rss / _MB)
            res = bench.loadgen.run(
                {
                    "op": "streams",
                    "target": proxy.as_job(),
                    "path": "/v1/chat/completions",
                    "bodies": [
                        chat_body(stream=True, text=f"Memory question {i}")
                        for i in range(p.pace_streams)
                    ],
                    "concurrency": p.pace_streams,
                    "spread_s": spread,
                    "duration_s": p.memory_window_s,
                    "verify": False,
                    "watch_pids": [stack.proxy_pid],
                },
                timeout=spread + p.memory_window_s + 120,
            )
            peak.append(res["rss_peak"][str(stack.proxy_pid)] / _MB)
            if res["errors"]:
                result.notes.append(f"{res['errors']} stream errors: {res['error_samples']}")
        time.sleep(0.5)
        after = process.memory_info().rss / _MB
    result.add("idle RSS", "MB", idle)
    result.add(f"peak RSS, {p.pace_streams} concurrent streams", "MB", peak, Target("<", 80.0))
    result.add("idle RSS after the last load", "MB", [after])
    result.notes.append("proxy process only (its Ollama child excluded); RSS sampled every 50 ms")
    return result
