"""Scenario 5: a peer, LiteLLM's proxy, under the loads of scenarios 1 and 2.

Method: LiteLLM (pinned in ``bench/litellm.requirements.txt``, installed only into
``bench/.venv-litellm`` on first use) runs one worker in front of the *same* simulator process
as our proxy, through its OpenAI-compatible provider (its cheapest path: no format
conversion), with its own master key, so both gateways authenticate. Each round alternates
direct / ours / LiteLLM request by request at concurrency 1 (chat and embeddings), then
saturates ours and LiteLLM in turn while psutil reads each gateway's CPU time (LiteLLM's whole
process tree). Figures: our added latency and CPU per request as a fraction of LiteLLM's
(target <= 0.2), plus both absolute values.
"""

from __future__ import annotations

from bench.context import SHORT_TOKENS, Bench, chat_body, embed_body
from bench.measure import latency_round, saturate
from bench.report import ScenarioResult, Target
from bench.stack import (
    LITELLM_REQUIREMENTS,
    LiteLLMStack,
    ProxyStack,
    StackError,
    ensure_litellm,
    http_post,
)
from bench.stats import ratio

NAME = "litellm"
TITLE = "Peer: LiteLLM proxy vs ours (same backend, same load)"

_LAT = (
    ("chat", "/v1/chat/completions", chat_body(stream=False, max_tokens=SHORT_TOKENS)),
    ("embeddings", "/v1/embeddings", embed_body()),
)


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
    try:
        with LiteLLMStack(bench.workdir, stack.direct_url, exe) as peer:
            target = peer.target()
            for _, path, body in _LAT:
                http_post(f"{peer.url}{path}", body, target.headers)
            _measure(bench, result, stack, peer)
    except StackError as exc:
        result.skipped = f"LiteLLM did not run: {exc}"
    return result


def _measure(bench: Bench, result: ScenarioResult, stack: ProxyStack, peer: LiteLLMStack) -> None:
    p = bench.profile
    direct, ours, theirs = stack.direct(), stack.proxy("ours"), peer.target()
    for kind, path, body in _LAT:
        ours50, ours99, their50, their99, r50, r99 = [], [], [], [], [], []
        for i in range(p.rounds):
            targets = [direct, ours, theirs] if i % 2 == 0 else [theirs, ours, direct]
            lat, _ = latency_round(
                bench.loadgen, targets, path, body, p.latency_requests, p.latency_warmup
            )
            a50 = lat["ours"].p50 - lat["direct"].p50
            a99 = lat["ours"].p99 - lat["direct"].p99
            b50 = lat["litellm"].p50 - lat["direct"].p50
            b99 = lat["litellm"].p99 - lat["direct"].p99
            ours50.append(a50)
            ours99.append(a99)
            their50.append(b50)
            their99.append(b99)
            r50.append(ratio(a50, b50))
            r99.append(ratio(a99, b99))
        result.add(f"{kind}: added p50, ours / LiteLLM", "x", r50, Target("<=", 0.2))
        result.add(f"{kind}: added p99, ours / LiteLLM", "x", r99, Target("<=", 0.2))
        result.add(f"{kind}: added p50, ours", "ms", ours50)
        result.add(f"{kind}: added p50, LiteLLM", "ms", their50)
        result.add(f"{kind}: added p99, LiteLLM", "ms", their99)
    kinds = (
        ("chat", "/v1/chat/completions", chat_body(stream=False, max_tokens=SHORT_TOKENS), False),
        ("stream", "/v1/chat/completions", chat_body(stream=True), True),
    )
    for kind, path, body, stream in kinds:
        cpu_ratio, cpu_ours, cpu_theirs, tput = [], [], [], []
        unit, per = ("chunks", 10_000.0) if stream else ("requests", 1_000.0)
        for i in range(p.rounds):
            order = ("ours", "litellm") if i % 2 == 0 else ("litellm", "ours")
            runs = {}
            for name in order:
                tgt, pids = (ours, [stack.proxy_pid]) if name == "ours" else (theirs, peer.pids)
                runs[name] = saturate(
                    bench.loadgen,
                    tgt,
                    path,
                    body,
                    concurrency=p.saturate_concurrency,
                    warmup_s=p.saturate_warmup_s,
                    duration_s=p.saturate_duration_s,
                    stream=stream,
                    watch={"gw": pids},
                )
            a = runs["ours"].cpu_per("gw", unit, per)
            b = runs["litellm"].cpu_per("gw", unit, per)
            cpu_ours.append(a)
            cpu_theirs.append(b)
            cpu_ratio.append(ratio(a, b))
            rate = "chunks_per_s" if stream else "requests_per_s"
            tput.append(ratio(getattr(runs["ours"], rate), getattr(runs["litellm"], rate)))
            if runs["litellm"].errors:
                result.notes.append(f"{kind}: LiteLLM answered {runs['litellm'].errors} errors")
        per_text = "10k chunks" if stream else "1k requests"
        target = Target("<=", 0.2) if not stream else None
        result.add(f"{kind}: gateway CPU per {per_text}, ours / LiteLLM", "x", cpu_ratio, target)
        result.add(f"{kind}: gateway CPU per {per_text}, ours", "s", cpu_ours)
        result.add(f"{kind}: gateway CPU per {per_text}, LiteLLM", "s", cpu_theirs)
        result.add(f"{kind}: throughput at saturation, ours / LiteLLM", "x", tput)
    pinned = _pinned()
    result.notes.append(
        "LiteLLM: OpenAI-compatible provider to the same simulator, 1 worker, master key on, "
        f"telemetry and cost-map download off ({pinned})"
    )
    result.extra["litellm"] = pinned


def _pinned() -> str:
    lines = LITELLM_REQUIREMENTS.read_text().splitlines()
    return ", ".join(ln.strip() for ln in lines if ln.strip() and not ln.startswith("#"))
