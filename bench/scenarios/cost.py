"""Scenario 2: the pure cost of the proxy at saturation, against a zero-delay backend.

Method: closed-loop load (``saturate_concurrency`` workers) on the simulator directly, then on
the proxy in front of the same simulator process (order alternated per round). Inside each
measurement window psutil reads the CPU time of the proxy process (its own, not its child's)
and of the simulator. Figures:

* proxy CPU seconds per 1,000 non-streamed chat requests (and per 1,000 embeddings);
* proxy CPU seconds per 10,000 relayed SSE chunks (200-token streams; the per-request part of
  the cost is spread over the stream's 201 chunks);
* requests/s and chunks/s through the proxy as a fraction of direct. On 2 cores a zero-cost
  backend makes any extra hop look expensive: the proxy competes for the same cores as the
  backend and the load generator, so these fractions are a lower bound;
* the load generator's own CPU% in both runs, to show it was not the bottleneck.
"""

from __future__ import annotations

from bench.context import SHORT_TOKENS, Bench, chat_body, embed_body
from bench.measure import Saturation, saturate
from bench.report import ScenarioResult
from bench.stats import ratio

NAME = "cost"
_LOADGEN_BUSY = 70.0
TITLE = "Pure cost at saturation (zero-delay backend)"

_KINDS = (
    ("chat", "/v1/chat/completions", chat_body(stream=False, max_tokens=SHORT_TOKENS), False),
    ("embeddings", "/v1/embeddings", embed_body(), False),
    ("stream", "/v1/chat/completions", chat_body(stream=True), True),
)


def run(bench: Bench) -> ScenarioResult:
    result = ScenarioResult(NAME, TITLE)
    stack = bench.zero_stack()
    p = bench.profile
    watch = {"proxy": [stack.proxy_pid], "backend": [stack.backend_pid]}
    if stack.aa:
        watch = {"proxy": [stack.proxy_pid], "backend": []}
    for kind, path, body, stream in _KINDS:
        fraction: list[float] = []
        cpu_proxy: list[float] = []
        cpu_backend_direct: list[float] = []
        cpu_backend_proxy: list[float] = []
        lg_direct: list[float] = []
        lg_proxy: list[float] = []
        rate_direct: list[float] = []
        errors = 0
        unit = "chunks" if stream else "requests"
        per = 10_000.0 if stream else 1_000.0
        for i in range(p.rounds):
            runs: dict[str, Saturation] = {}
            order = ("direct", "proxy") if i % 2 == 0 else ("proxy", "direct")
            for name in order:
                target = stack.direct() if name == "direct" else stack.proxy()
                runs[name] = saturate(
                    bench.loadgen,
                    target,
                    path,
                    body,
                    concurrency=p.saturate_concurrency,
                    warmup_s=p.saturate_warmup_s,
                    duration_s=p.saturate_duration_s,
                    stream=stream,
                    watch=watch,
                )
            d, x = runs["direct"], runs["proxy"]
            errors += d.errors + x.errors
            if stream:
                fraction.append(ratio(x.chunks_per_s, d.chunks_per_s))
                rate_direct.append(d.chunks_per_s)
            else:
                fraction.append(ratio(x.requests_per_s, d.requests_per_s))
                rate_direct.append(d.requests_per_s)
            cpu_proxy.append(x.cpu_per("proxy", unit, per))
            cpu_backend_direct.append(d.cpu_per("backend", unit, per))
            cpu_backend_proxy.append(x.cpu_per("backend", unit, per))
            lg_direct.append(d.loadgen_cpu_pct)
            lg_proxy.append(x.loadgen_cpu_pct)
        per_text = "10k chunks" if stream else "1k requests"
        rate_unit = "chunks/s" if stream else "req/s"
        result.add(f"{kind}: proxy CPU per {per_text}", "s", cpu_proxy)
        result.add(f"{kind}: {rate_unit} via proxy / direct", "x", fraction)
        result.add(f"{kind}: direct {rate_unit} (context)", rate_unit, rate_direct)
        result.add(
            f"{kind}: backend CPU per {per_text}, proxied / direct",
            "x",
            [ratio(a, b) for a, b in zip(cpu_backend_proxy, cpu_backend_direct, strict=True)],
        )
        result.add(f"{kind}: load generator CPU, direct run", "%", lg_direct)
        result.add(f"{kind}: load generator CPU, proxy run", "%", lg_proxy)
        if errors:
            result.notes.append(f"{kind}: {errors} error responses during the windows")
        for side, values in (("direct", lg_direct), ("proxy", lg_proxy)):
            busiest = max(values, default=0.0)
            if busiest > _LOADGEN_BUSY:
                result.notes.append(
                    f"{kind}: the load generator reached {busiest:.0f}% of a core in the {side} "
                    f"run, so that run's rate is partly client-bound (a lower bound)"
                )
        if stream:
            result.notes.append(
                "stream: a zero-delay simulator writes every token as its own tiny HTTP chunk; "
                "the proxy relays whatever it has read in one write, so through it the client "
                "reads fewer, larger pieces. That is why chunks/s via the proxy can exceed direct "
                "and why the simulator spends less CPU per chunk when proxied"
            )
    result.notes.append(
        f"{p.saturate_concurrency} closed-loop workers, {p.saturate_duration_s:g} s windows after "
        f"{p.saturate_warmup_s:g} s warm-up; stream = 200 tokens (201 SSE chunks) per request"
    )
    return result
