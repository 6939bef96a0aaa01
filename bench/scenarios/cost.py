"""Scenario 2: the pure cost of the proxy at saturation, against a zero-delay backend, with
two floor anchors: nginx, and a bare aiohttp hop.

Method: closed-loop load (``saturate_concurrency`` workers) on the simulator directly, then on
the proxy in front of the same simulator process, on nginx in front of it (a plain streaming
reverse proxy, one worker; see :class:`bench.stack.NginxStack`) and on a bare aiohttp hop in
front of it (the proxy's libraries and event loop, none of its features; see
:mod:`bench.bare_hop`), the order rotated per round. Inside each measurement window psutil
reads the CPU time of the proxy process (its own, not its child's), of nginx (master and
worker), of the hop and of the simulator. Figures:

* proxy CPU seconds per 1,000 non-streamed chat requests (and per 1,000 embeddings), each
  floor's beside it, and the ratios: proxy / nginx is what the proxy costs over any hop,
  proxy / bare hop what its own features (auth, parsing, policy, fair share, access log,
  metrics, usage) cost over a Python hop;
* proxy CPU seconds per 10,000 relayed SSE chunks (200-token streams; the per-request part of
  the cost is spread over the stream's 201 chunks), nginx's beside it;
* requests/s and chunks/s through the proxy (and through nginx) as a fraction of direct. On 2
  cores a zero-cost backend makes any extra hop look expensive: the gateway competes for the
  same cores as the backend and the load generator, so these fractions are a lower bound, and
  nginx's shows how much of that any hop pays;
* the load generator's own CPU% in every run, to show it was not the bottleneck.
"""

from __future__ import annotations

from bench.context import SHORT_TOKENS, Bench, chat_body, embed_body
from bench.measure import Saturation, rotate, saturate
from bench.report import ScenarioResult
from bench.stack import Target
from bench.stats import ratio

NAME = "cost"
_LOADGEN_BUSY = 70.0
_FLOORS = (("nginx", "nginx"), ("aiohttp", "bare aiohttp hop"))
"""The floor anchors: target name, and how the figures name it."""
TITLE = "Pure cost at saturation (zero-delay backend; nginx and a bare aiohttp hop as floors)"

_KINDS = (
    ("chat", "/v1/chat/completions", chat_body(stream=False, max_tokens=SHORT_TOKENS), False),
    ("embeddings", "/v1/embeddings", embed_body(), False),
    ("stream", "/v1/chat/completions", chat_body(stream=True), True),
)


def run(bench: Bench) -> ScenarioResult:
    result = ScenarioResult(NAME, TITLE)
    stack = bench.zero_stack()
    nginx = bench.nginx()
    targets: dict[str, Target] = {"direct": stack.direct(), "proxy": stack.proxy()}
    watch = {"proxy": [stack.proxy_pid], "backend": [] if stack.aa else [stack.backend_pid]}
    if nginx is not None:
        targets["nginx"] = nginx.target()
        watch["nginx"] = nginx.pids
        result.extra["nginx"] = nginx.version
    else:
        result.notes.append(f"nginx floor not measured: {bench.nginx_missing}")
    hop = bench.bare_hop()
    targets["aiohttp"] = hop.target()
    watch["aiohttp"] = [hop.pid]
    gateways = [name for name in targets if name != "direct"]
    p = bench.profile
    for kind, path, body, stream in _KINDS:
        fraction: dict[str, list[float]] = {g: [] for g in gateways}
        cpu: dict[str, list[float]] = {g: [] for g in gateways}
        cpu_backend: dict[str, list[float]] = {name: [] for name in targets}
        loadgen: dict[str, list[float]] = {name: [] for name in targets}
        rate_direct: list[float] = []
        errors = 0
        unit = "chunks" if stream else "requests"
        per = 10_000.0 if stream else 1_000.0
        for i in range(p.rounds):
            runs: dict[str, Saturation] = {}
            for name in rotate(list(targets), i):
                runs[name] = saturate(
                    bench.loadgen,
                    targets[name],
                    path,
                    body,
                    concurrency=p.saturate_concurrency,
                    warmup_s=p.saturate_warmup_s,
                    duration_s=p.saturate_duration_s,
                    stream=stream,
                    watch=watch,
                )
            d = runs["direct"]
            errors += sum(run.errors for run in runs.values())
            rate = "chunks_per_s" if stream else "requests_per_s"
            rate_direct.append(getattr(d, rate))
            for g in gateways:
                fraction[g].append(ratio(getattr(runs[g], rate), getattr(d, rate)))
                cpu[g].append(runs[g].cpu_per(g, unit, per))
            for name, run in runs.items():
                cpu_backend[name].append(run.cpu_per("backend", unit, per))
                loadgen[name].append(run.loadgen_cpu_pct)
        per_text = "10k chunks" if stream else "1k requests"
        rate_unit = "chunks/s" if stream else "req/s"
        result.add(f"{kind}: proxy CPU per {per_text}", "s", cpu["proxy"])
        floors = [(name, label) for name, label in _FLOORS if name in cpu]
        for name, label in floors:
            result.add(f"{kind}: {label} CPU per {per_text} (floor)", "s", cpu[name])
            result.add(
                f"{kind}: CPU per {per_text}, proxy / {label}",
                "x",
                [ratio(a, b) for a, b in zip(cpu["proxy"], cpu[name], strict=True)],
            )
        result.add(f"{kind}: {rate_unit} via proxy / direct", "x", fraction["proxy"])
        for name, label in floors:
            result.add(f"{kind}: {rate_unit} via {label} / direct", "x", fraction[name])
        result.add(f"{kind}: direct {rate_unit} (context)", rate_unit, rate_direct)
        result.add(
            f"{kind}: backend CPU per {per_text}, proxied / direct",
            "x",
            [ratio(a, b) for a, b in zip(cpu_backend["proxy"], cpu_backend["direct"], strict=True)],
        )
        for name, values in loadgen.items():
            result.add(f"{kind}: load generator CPU, {name} run", "%", values)
        if errors:
            result.notes.append(f"{kind}: {errors} error responses during the windows")
        for name, values in loadgen.items():
            busiest = max(values, default=0.0)
            if busiest > _LOADGEN_BUSY:
                result.notes.append(
                    f"{kind}: the load generator reached {busiest:.0f}% of a core in the {name} "
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
        f"{p.saturate_warmup_s:g} s warm-up; stream = 200 tokens (201 SSE chunks) per request; "
        "nginx: one worker, proxy_buffering off, keep-alive upstream pool, access log on, no auth; "
        "bare aiohttp hop: aiohttp on uvloop, keep-alive pool, pieces relayed as they arrive, "
        "no auth, no log"
    )
    return result
