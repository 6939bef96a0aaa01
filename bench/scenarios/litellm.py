"""Scenario 5: a peer, LiteLLM's proxy, and the floor, nginx, beside ours under the loads of
scenarios 1 and 2.

Method: LiteLLM (pinned in ``bench/litellm.requirements.txt``, installed only into
``bench/.venv-litellm`` on first use) runs one worker in front of the *same* simulator process
as our proxy, through its OpenAI-compatible provider (its cheapest path: no format
conversion), with its own master key, so both gateways authenticate. nginx (a plain streaming
reverse proxy, one worker, no auth; :class:`bench.stack.NginxStack`) stands in front of it too,
as the floor any extra hop pays. Each round alternates direct / ours / nginx / LiteLLM request by
request at concurrency 1 (chat and embeddings), then saturates each gateway in turn while psutil
reads its CPU time (LiteLLM's and nginx's whole process trees). Figures: the three gateways'
added latency and CPU per request side by side, ours as a fraction of LiteLLM's (target
<= 0.2) and of nginx's, all measured in the same rounds.
"""

from __future__ import annotations

from bench.context import SHORT_TOKENS, Bench, chat_body, embed_body
from bench.measure import Saturation, latency_round, rotate, saturate
from bench.report import ScenarioResult, Target
from bench.stack import (
    LITELLM_REQUIREMENTS,
    LiteLLMStack,
    NginxStack,
    ProxyStack,
    StackError,
    ensure_litellm,
    http_post,
)
from bench.stack import Target as Endpoint
from bench.stats import ratio

NAME = "litellm"
TITLE = "Peers: ours, nginx (the floor) and LiteLLM's proxy (same backend, same load)"

_LAT = (
    ("chat", "/v1/chat/completions", chat_body(stream=False, max_tokens=SHORT_TOKENS)),
    ("embeddings", "/v1/embeddings", embed_body()),
)
_LABELS = {"ours": "ours", "nginx": "nginx", "litellm": "LiteLLM"}


def run(bench: Bench) -> ScenarioResult:
    result = ScenarioResult(NAME, TITLE)
    if bench.aa:
        result.skipped = "needs the proxy (not run in A/A mode)"
        return result
    if not bench.profile.litellm:
        result.skipped = "not run in smoke mode (installs LiteLLM into bench/.venv-litellm)"
        return result
    try:
        exe = ensure_litellm(bench.workdir / "litellm-install.log")
    except StackError as exc:
        result.skipped = f"LiteLLM could not be installed: {exc}"
        return result
    stack = bench.zero_stack()
    nginx = bench.nginx()
    if nginx is None:
        result.notes.append(f"nginx floor not measured: {bench.nginx_missing}")
    try:
        with LiteLLMStack(bench.workdir, stack.direct_url, exe) as peer:
            target = peer.target()
            for _, path, body in _LAT:
                http_post(f"{peer.url}{path}", body, target.headers)
            _measure(bench, result, stack, peer, nginx)
    except StackError as exc:
        result.skipped = f"LiteLLM did not run: {exc}"
    return result


def _measure(
    bench: Bench,
    result: ScenarioResult,
    stack: ProxyStack,
    peer: LiteLLMStack,
    nginx: NginxStack | None,
) -> None:
    p = bench.profile
    gateways: dict[str, tuple[Endpoint, list[int]]] = {
        "ours": (stack.proxy("ours"), [stack.proxy_pid]),
        "litellm": (peer.target(), peer.pids),
    }
    if nginx is not None:
        gateways["nginx"] = (nginx.target(), nginx.pids)
    names = list(gateways)
    direct = stack.direct()
    for kind, path, body in _LAT:
        added: dict[str, dict[str, list[float]]] = {g: {"p50": [], "p99": []} for g in names}
        r50: list[float] = []
        r99: list[float] = []
        for i in range(p.rounds):
            targets = rotate([direct, *(gateways[g][0] for g in names)], i)
            lat, _ = latency_round(
                bench.loadgen, targets, path, body, p.latency_requests, p.latency_warmup
            )
            for g in names:
                added[g]["p50"].append(lat[g].p50 - lat["direct"].p50)
                added[g]["p99"].append(lat[g].p99 - lat["direct"].p99)
            r50.append(ratio(added["ours"]["p50"][-1], added["litellm"]["p50"][-1]))
            r99.append(ratio(added["ours"]["p99"][-1], added["litellm"]["p99"][-1]))
        result.add(f"{kind}: added p50, ours / LiteLLM", "x", r50, Target("<=", 0.2))
        result.add(f"{kind}: added p99, ours / LiteLLM", "x", r99, Target("<=", 0.2))
        for quantile in ("p50", "p99"):
            for g in ("ours", "nginx", "litellm"):
                if g in added:
                    result.add(f"{kind}: added {quantile}, {_LABELS[g]}", "ms", added[g][quantile])
    kinds = (
        ("chat", "/v1/chat/completions", chat_body(stream=False, max_tokens=SHORT_TOKENS), False),
        ("stream", "/v1/chat/completions", chat_body(stream=True), True),
    )
    for kind, path, body, stream in kinds:
        cpu: dict[str, list[float]] = {g: [] for g in names}
        tput: list[float] = []
        unit, per = ("chunks", 10_000.0) if stream else ("requests", 1_000.0)
        rate = "chunks_per_s" if stream else "requests_per_s"
        for i in range(p.rounds):
            runs: dict[str, Saturation] = {}
            for g in rotate(names, i):
                endpoint, pids = gateways[g]
                runs[g] = saturate(
                    bench.loadgen,
                    endpoint,
                    path,
                    body,
                    concurrency=p.saturate_concurrency,
                    warmup_s=p.saturate_warmup_s,
                    duration_s=p.saturate_duration_s,
                    stream=stream,
                    watch={"gw": pids},
                )
                cpu[g].append(runs[g].cpu_per("gw", unit, per))
            tput.append(ratio(getattr(runs["ours"], rate), getattr(runs["litellm"], rate)))
            for g, run in runs.items():
                if run.errors:
                    result.notes.append(f"{kind}: {_LABELS[g]} answered {run.errors} errors")
        per_text = "10k chunks" if stream else "1k requests"
        target = Target("<=", 0.2) if not stream else None
        result.add(
            f"{kind}: gateway CPU per {per_text}, ours / LiteLLM",
            "x",
            [ratio(a, b) for a, b in zip(cpu["ours"], cpu["litellm"], strict=True)],
            target,
        )
        if "nginx" in cpu:
            result.add(
                f"{kind}: gateway CPU per {per_text}, ours / nginx",
                "x",
                [ratio(a, b) for a, b in zip(cpu["ours"], cpu["nginx"], strict=True)],
            )
        for g in ("ours", "nginx", "litellm"):
            if g in cpu:
                result.add(f"{kind}: gateway CPU per {per_text}, {_LABELS[g]}", "s", cpu[g])
        result.add(f"{kind}: throughput at saturation, ours / LiteLLM", "x", tput)
    pinned = _pinned()
    result.notes.append(
        "LiteLLM: OpenAI-compatible provider to the same simulator, 1 worker, master key on, "
        f"telemetry and cost-map download off ({pinned}); nginx: 1 worker, proxy_buffering off, "
        "keep-alive upstream pool, access log on, no auth"
    )
    result.extra["litellm"] = pinned
    if nginx is not None:
        result.extra["nginx"] = nginx.version


def _pinned() -> str:
    lines = LITELLM_REQUIREMENTS.read_text().splitlines()
    return ", ".join(ln.strip() for ln in lines if ln.strip() and not ln.startswith("#"))
