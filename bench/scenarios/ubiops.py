"""Scenario 4: UbiOps forwarding, ``deployment_package/deployment.py`` against the tutorial's.

Method: two request processes, each a long-lived :class:`~bench.ubiops_worker.DeploymentWorker`:
ours (``Deployment`` with ``process_id`` 1, which only waits for the running proxy) and the
tutorial's ``request()`` (:mod:`bench.tutorial_baseline`: the ``openai`` client,
``model_dump()`` and ``json.dumps`` per chunk). To be fair both talk to the *same* proxy, in
front of the same zero-delay simulator, with the same payload (plain input: the JSON text of a
200-token streamed chat request); so the only difference is the request process's own code.
Rounds alternate which one goes first. Each process serves its requests one after the other,
as a UbiOps request process does; the figures are its chunks/s (wall) and its own CPU seconds
per 1,000 chunks, and ours relative to the tutorial's. Ours relays one chunk more per request:
the usage chunk it asks Ollama for (UbiOps' token metrics read it), which the tutorial does not.
"""

from __future__ import annotations

import json

from bench.context import Bench, chat_body
from bench.report import ScenarioResult, Target
from bench.stack import API_KEY, CHAT_MODEL, EMBED_MODEL
from bench.stats import ratio
from bench.ubiops_worker import DeploymentWorker

NAME = "ubiops"
TITLE = "UbiOps forwarding: deployment.py vs the tutorial's request()"


def run(bench: Bench) -> ScenarioResult:
    result = ScenarioResult(NAME, TITLE)
    if bench.aa:
        result.skipped = "needs the proxy (not run in A/A mode)"
        return result
    stack = bench.zero_stack()
    p = bench.profile
    data = json.dumps(chat_body(stream=True))
    common = {
        **stack.env,
        "OLLAMA_CHAT_MODELS": CHAT_MODEL,
        "OLLAMA_EMBEDDING_MODELS": EMBED_MODEL,
        "LOG_LEVEL": "warning",
    }
    tutorial_env = {
        **common,
        "BENCH_OPENAI_BASE_URL": f"{stack.proxy_url}/v1",
        "BENCH_OPENAI_API_KEY": API_KEY,
    }
    workers = {
        "ours": DeploymentWorker("ours", common),
        "tutorial": DeploymentWorker("tutorial", tutorial_env),
    }
    speed: list[float] = []
    cpu_ratio: list[float] = []
    cpu_ours: list[float] = []
    cpu_tut: list[float] = []
    chunks: dict[str, set[int]] = {"ours": set(), "tutorial": set()}
    try:
        for worker in workers.values():
            worker.start()
        for worker in workers.values():
            worker.run({"op": "run", "data": data, "requests": 2}, timeout=120)
        for i in range(p.rounds):
            order = ("ours", "tutorial") if i % 2 == 0 else ("tutorial", "ours")
            res = {}
            for name in order:
                res[name] = workers[name].run(
                    {"op": "run", "data": data, "requests": p.ubiops_requests}, timeout=600
                )
                chunks[name].update(res[name]["chunks_per_request"], res[name]["output_items"])
            o, t = res["ours"], res["tutorial"]
            speed.append(ratio(o["chunks"] / o["wall_s"], t["chunks"] / t["wall_s"]))
            per_o = o["cpu_s"] / o["chunks"] * 1000
            per_t = t["cpu_s"] / t["chunks"] * 1000
            cpu_ours.append(per_o)
            cpu_tut.append(per_t)
            cpu_ratio.append(ratio(per_t, per_o))
    finally:
        for worker in workers.values():
            worker.close()
    result.add("chunks/s, ours / tutorial", "x", speed, Target(">=", 2.0))
    result.add(
        "request-process CPU per 1k chunks, tutorial / ours", "x", cpu_ratio, Target(">=", 2.0)
    )
    result.add("request-process CPU per 1k chunks, ours", "s", cpu_ours)
    result.add("request-process CPU per 1k chunks, tutorial", "s", cpu_tut)
    if chunks["ours"] != {n + 1 for n in chunks["tutorial"]}:
        result.notes.append(
            f"chunks (relayed and returned) per request, expected ours = tutorial + 1: {chunks}"
        )
    result.notes.append(
        f"both through the same proxy and zero-delay simulator; {p.ubiops_requests} streamed "
        f"requests per side per round; chunks per request, ours (usage chunk included) "
        f"{sorted(chunks['ours'])}, tutorial {sorted(chunks['tutorial'])}"
    )
    return result
