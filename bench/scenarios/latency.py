"""Scenario 1: latency the proxy adds at concurrency 1 (non-streamed chat, and embeddings).

Method: one keep-alive connection to the simulator (direct) and one to the proxy in front of
that same simulator process; requests alternate direct/proxy (ABBA) so both sides see the same
machine at the same instant. Per round: p50 and p99 of each side, and the differences. The
figures are the medians of the per-round differences over the rounds.
"""

from __future__ import annotations

from bench.context import SHORT_TOKENS, Bench, chat_body, embed_body
from bench.measure import latency_round
from bench.report import ScenarioResult, Target

NAME = "latency"
TITLE = "Added latency at concurrency 1 (proxy minus direct)"

_KINDS = (
    ("chat", "/v1/chat/completions", chat_body(stream=False, max_tokens=SHORT_TOKENS)),
    ("embeddings", "/v1/embeddings", embed_body()),
)


def run(bench: Bench) -> ScenarioResult:
    result = ScenarioResult(NAME, TITLE)
    stack = bench.zero_stack()
    direct, proxy = stack.direct(), stack.proxy()
    p = bench.profile
    cpu_pct: list[float] = []
    for kind, path, body in _KINDS:
        add50: list[float] = []
        add99: list[float] = []
        base50: list[float] = []
        for i in range(p.rounds):
            targets = [direct, proxy] if i % 2 == 0 else [proxy, direct]
            lat, lg_cpu = latency_round(
                bench.loadgen, targets, path, body, p.latency_requests, p.latency_warmup
            )
            add50.append(lat["proxy"].p50 - lat["direct"].p50)
            add99.append(lat["proxy"].p99 - lat["direct"].p99)
            base50.append(lat["direct"].p50)
            cpu_pct.append(lg_cpu)
        result.add(f"{kind}: added p50", "ms", add50, Target("<", 1.0))
        result.add(f"{kind}: added p99", "ms", add99, Target("<", 3.0))
        result.add(f"{kind}: direct p50 (context)", "ms", base50)
    result.add("load generator CPU", "%", cpu_pct)
    result.notes.append(
        f"{p.rounds} rounds x {p.latency_requests} requests per side, alternated per request "
        f"on one keep-alive connection each; chat answers {SHORT_TOKENS} tokens"
    )
    return result
