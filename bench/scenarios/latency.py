"""Scenario 1: latency the proxy adds at concurrency 1 (non-streamed chat completions, Anthropic
messages and embeddings), with nginx as the floor anchor, and the scheduler's share of it.

Method: one keep-alive connection to the simulator (direct), one to the proxy in front of that
same simulator process, and one to nginx (a plain streaming reverse proxy, see
:class:`bench.stack.NginxStack`) in front of it too; requests alternate between them (ABBA) so
all see the same machine at the same instant. Per round: p50 and p99 of each, and each gateway's
difference from direct. The figures are the medians of the per-round differences over the
rounds. nginx shows what any extra hop costs here; the proxy's excess over it is its own work
(auth, routing, logging, Python).

The scheduler's part of that work (per-model lanes, keys' turns, rate windows) is measured
in-process beside a plain semaphore (:mod:`bench.admission_cost`), idle and contended.
"""

from __future__ import annotations

from bench import admission_cost
from bench.context import SHORT_TOKENS, Bench, chat_body, embed_body, messages_body
from bench.measure import latency_round, rotate
from bench.report import ScenarioResult, Target

NAME = "latency"
TITLE = "Added latency at concurrency 1 (proxy minus direct; nginx as the floor)"

_KINDS = (
    ("chat", "/v1/chat/completions", chat_body(stream=False, max_tokens=SHORT_TOKENS)),
    ("messages", "/v1/messages", messages_body(max_tokens=SHORT_TOKENS)),
    ("embeddings", "/v1/embeddings", embed_body()),
)


def run(bench: Bench) -> ScenarioResult:
    result = ScenarioResult(NAME, TITLE)
    stack = bench.zero_stack()
    nginx = bench.nginx()
    targets = [stack.direct(), stack.proxy()]
    if nginx is not None:
        targets.append(nginx.target())
        result.extra["nginx"] = nginx.version
    else:
        result.notes.append(f"nginx floor not measured: {bench.nginx_missing}")
    p = bench.profile
    cpu_pct: list[float] = []
    chat_added: list[float] = []
    for kind, path, body in _KINDS:
        added: dict[str, dict[str, list[float]]] = {
            t.name: {"p50": [], "p99": []} for t in targets[1:]
        }
        base50: list[float] = []
        for i in range(p.rounds):
            lat, lg_cpu = latency_round(
                bench.loadgen, rotate(targets, i), path, body, p.latency_requests, p.latency_warmup
            )
            for name, side in added.items():
                side["p50"].append(lat[name].p50 - lat["direct"].p50)
                side["p99"].append(lat[name].p99 - lat["direct"].p99)
            base50.append(lat["direct"].p50)
            cpu_pct.append(lg_cpu)
        result.add(f"{kind}: added p50", "ms", added["proxy"]["p50"], Target("<", 1.0))
        result.add(f"{kind}: added p99", "ms", added["proxy"]["p99"], Target("<", 3.0))
        if "nginx" in added:
            result.add(f"{kind}: nginx added p50 (floor)", "ms", added["nginx"]["p50"])
            result.add(f"{kind}: nginx added p99 (floor)", "ms", added["nginx"]["p99"])
            result.add(
                f"{kind}: added p50, proxy minus nginx",
                "ms",
                [a - b for a, b in zip(added["proxy"]["p50"], added["nginx"]["p50"], strict=True)],
            )
        result.add(f"{kind}: direct p50 (context)", "ms", base50)
        if kind == "chat":
            chat_added = added["proxy"]["p50"]
    _scheduler(result, p.rounds, p.latency_requests, chat_added)
    result.add("load generator CPU", "%", cpu_pct)
    result.notes.append(
        f"{p.rounds} rounds x {p.latency_requests} requests per target, alternated per request "
        f"on one keep-alive connection each; chat and messages answer {SHORT_TOKENS} tokens"
    )
    return result


def _scheduler(result: ScenarioResult, rounds: int, requests: int, chat_added: list[float]) -> None:
    """The scheduler's cost per request beside a semaphore, and its share of chat's added p50."""
    costs = [admission_cost.measure(requests * 25) for _ in range(rounds)]
    idle = [c.idle_us for c in costs]
    result.add("scheduler: added per request, idle", "us", idle)
    result.add("scheduler: added per request, contended", "us", [c.contended_us for c in costs])
    result.add(
        "scheduler: share of chat added p50",
        "%",
        [us / 1000 / ms * 100 for us, ms in zip(idle, chat_added, strict=True)],
        Target("<", 5.0),
    )
    result.notes.append(
        "scheduler: per request, minus an asyncio.Semaphore doing the same in the same loop; "
        "contended = 32 tasks of 8 weighted, capped keys for a budget of 2"
    )
