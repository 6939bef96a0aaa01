"""Scenario 8: the proxy in front of the real Ollama with the tutorial's SmolLM2.

Method: ``python -m proxy serve`` supervising the real ``ollama serve`` (the v0.24.0 that
``scripts/real-ollama.sh`` builds, with ``smollm2:135m`` and ``all-minilm:l6-v2`` from its
cache); "direct" is that same ``ollama serve``. Skipped, saying how to build them, when they are
not cached, and in ``--smoke`` unless named (``--only real``). Each round, at concurrency 1 and
alternated request by request (ABBA) on one keep-alive connection per side:

* streamed chat (OpenAI SSE), greedy (temperature 0, fixed seed) so that both sides generate the
  same text: time to first token, decode rate (chunks per second after the first) and the whole
  stream's time, proxy minus direct (or proxy / direct for the rate), compared pair by pair
  (each proxied stream with the direct one next to it in time), the round's figure being the
  median over its pairs;
* non-streamed chat (a few tokens) and embeddings: added latency p50.

Generation runs on the same two cores as the proxy, so what the proxy adds here includes its
competition with the model for CPU. A model runner of anything else on the machine (another
Ollama) competes too, and on two cores that swamps every figure: the CPU such runners used
during each round is reported beside the figures, and noted when it is not negligible.
"""

from __future__ import annotations

import operator
import time
from pathlib import Path

import psutil

from bench.context import Bench, chat_body, embed_body
from bench.measure import latency_round, paired, rotate, stream_latency_round
from bench.report import ScenarioResult, Target
from bench.stack import (
    REAL_CHAT_MODEL,
    REAL_EMBED_MODEL,
    StackError,
    http_post,
    real_ollama,
)
from bench.stats import percentile, ratio
from proxy.testing.harness import http_json

NAME = "real"
TITLE = "Real Ollama with SmolLM2: proxy vs direct"

_PROMPT = "Tell me a short story about a lighthouse keeper and a storm."
_SHORT_TOKENS = 8
_KEEP_UP = 0.98
_NEIGHBOURS_NEGLIGIBLE = 0.1
"""Cores of other model runners below which a round counts as undisturbed."""


def _greedy(body: dict[str, object]) -> dict[str, object]:
    return {**body, "temperature": 0, "seed": 7}


def run(bench: Bench) -> ScenarioResult:
    result = ScenarioResult(NAME, TITLE)
    if bench.aa:
        result.skipped = "needs the proxy (not run in A/A mode)"
        return result
    if bench.smoke and NAME not in bench.named:
        result.skipped = (
            "not run in smoke mode unless named (--only real): a real model on 2 shared cores "
            "takes seconds when they are idle, minutes when they are busy"
        )
        return result
    try:
        real = real_ollama()
    except StackError as exc:
        result.skipped = str(exc)
        return result
    p = bench.profile
    stream_body = _greedy(
        chat_body(stream=True, max_tokens=p.real_stream_tokens, text=_PROMPT, model=REAL_CHAT_MODEL)
    )
    chat = _greedy(
        chat_body(stream=False, max_tokens=_SHORT_TOKENS, text=_PROMPT, model=REAL_CHAT_MODEL)
    )
    embed = embed_body(model=REAL_EMBED_MODEL)
    with bench.stack(None, extra_env=real.proxy_env(), name="real") as stack:
        _, version = http_json(f"{stack.direct_url}/api/version")
        result.extra["ollama"] = version.get("version") if isinstance(version, dict) else None
        result.extra["ollama_bin"] = str(real.bin)
        direct, proxy = stack.direct(), stack.proxy()
        http_post(f"{proxy.url}/v1/chat/completions", chat, proxy.headers)  # both models warm
        http_post(f"{proxy.url}/v1/embeddings", embed, proxy.headers)
        ttft: list[float] = []
        tps: list[float] = []
        total: list[float] = []
        base_ttft: list[float] = []
        base_tps: list[float] = []
        tokens: list[float] = []
        chat_added: list[float] = []
        embed50: list[float] = []
        embed99: list[float] = []
        differ = 0
        neighbours: list[float] = []
        for i in range(p.real_rounds):
            before, t0 = _runner_cpu(stack.proxy_pid), time.monotonic()
            order = rotate([direct, proxy], i)
            streams, _ = stream_latency_round(
                bench.loadgen, order, "/v1/chat/completions", stream_body, p.real_streams, 1
            )
            d, x = streams["direct"], streams["proxy"]
            ttft.append(paired(x.ttfc_ms, d.ttfc_ms, operator.sub))
            tps.append(paired(x.decode_per_s, d.decode_per_s, ratio))
            total.append(paired(x.total_ms, d.total_ms, operator.sub))
            base_ttft.append(percentile(d.ttfc_ms, 50))
            base_tps.append(percentile(d.decode_per_s, 50))
            tokens.append(percentile(d.chunks, 50))
            differ += sum(digest not in d.digests for digest in x.digests)
            lat, _ = latency_round(
                bench.loadgen, order, "/v1/chat/completions", chat, p.real_chats, 1
            )
            chat_added.append(lat["proxy"].p50 - lat["direct"].p50)
            lat, _ = latency_round(
                bench.loadgen, order, "/v1/embeddings", embed, p.real_embeddings, 3
            )
            embed50.append(lat["proxy"].p50 - lat["direct"].p50)
            embed99.append(lat["proxy"].p99 - lat["direct"].p99)
            after = _runner_cpu(stack.proxy_pid)
            busy = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
            neighbours.append(busy / (time.monotonic() - t0))
    result.add("stream: added time to first token p50", "ms", ttft)
    result.add("stream: tokens/s via proxy / direct", "x", tps, Target(">=", _KEEP_UP))
    result.add("stream: added whole-stream time p50", "ms", total)
    result.add("stream: direct time to first token p50 (context)", "ms", base_ttft)
    result.add("stream: direct tokens/s (context)", "tok/s", base_tps)
    result.add("stream: chunks per stream (context)", "chunks", tokens)
    result.add("streams whose text differs from direct", "streams", [differ])
    result.add(f"chat ({_SHORT_TOKENS} tokens, whole): added p50", "ms", chat_added)
    result.add("embeddings: added p50", "ms", embed50)
    result.add("embeddings: added p99", "ms", embed99)
    result.add("other model runners on this machine, during the round", "cores", neighbours)
    result.notes.append(
        f"Ollama {result.extra['ollama']} ({real.bin}) with {REAL_CHAT_MODEL} and "
        f"{REAL_EMBED_MODEL}; {p.real_rounds} rounds x {p.real_streams} greedy streams of up to "
        f"{p.real_stream_tokens} tokens, {p.real_chats} whole chats and {p.real_embeddings} "
        "embeddings per side, alternated per request at concurrency 1"
    )
    disturbed = sum(busy >= _NEIGHBOURS_NEGLIGIBLE for busy in neighbours)
    if disturbed:
        result.notes.append(
            f"in {disturbed} of {p.real_rounds} rounds other model runners on this machine used "
            f"up to {max(neighbours):.2f} cores of its {psutil.cpu_count()}: those rounds measure "
            "contention with them more than the proxy; re-run with --only real when they are idle"
        )
    if differ:
        result.notes.append(
            f"{differ} proxied streams differed from every direct one in the same round: greedy "
            "decoding on CPU is not always bit-for-bit repeatable (prompt cache reuse)"
        )
    return result


def _runner_cpu(own: int) -> dict[int, float]:
    """CPU seconds so far of every model runner on this machine outside the process tree of
    ``own`` (``ollama runner``, ``llama-server``), by pid."""
    try:
        ours = {own, *(c.pid for c in psutil.Process(own).children(recursive=True))}
    except psutil.Error:
        ours = {own}
    found: dict[int, float] = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.pid in ours or not cmdline:
            continue
        name = Path(cmdline[0]).name
        if (name == "ollama" and "runner" in cmdline[1:2]) or name == "llama-server":
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            found[proc.pid] = times.user + times.system
    return found
