"""Scenario 3: many concurrent streams at a realistic token pace.

Method: the simulator paces 20 ms per token, 200 tokens per answer (a 4 s stream). 64 workers
stream back to back; their first starts are spread evenly over one stream's length, so the
window that follows sees a steady mix of stream phases. Each round measures the simulator
directly and then through the proxy (order alternated) with identical per-worker prompts:

* total tokens/s received in the window, proxy / direct (target >= 0.98);
* time to first chunk, p50 proxy minus p50 direct (target < 2 ms);
* delivery: every completed stream through the proxy must carry the same chunks, in the same
  order, as the same worker's stream direct (a digest of each chunk's delta and finish reason),
  and the text must equal the simulator's deterministic output
  (:func:`proxy.testing.simulator.expected_text`).

Then the token delay is stepped down (a new stack per pace) until the tokens/s ratio drops
below 0.98: the pace at which the proxy starts to fall behind on this machine.
"""

from __future__ import annotations

import math
from typing import Any

from bench.context import Bench, chat_body
from bench.report import ScenarioResult, Target
from bench.stack import CHAT_MODEL, ProxyStack
from bench.stats import percentile, ratio, summarize
from proxy.testing.simulator import expected_text

NAME = "pace"
TITLE = "Realistic pace: concurrent streams at 20 ms/token"

_KEEP_UP = 0.98


def _bodies(n: int) -> list[dict[str, Any]]:
    return [chat_body(stream=True, text=f"Question number {i}: tell me a story.") for i in range(n)]


def _job(
    stack: ProxyStack, target: str, bench: Bench, delay: float, window: float
) -> dict[str, Any]:
    p = bench.profile
    tgt = stack.direct() if target == "direct" else stack.proxy()
    spread = p.pace_tokens * delay
    pids = [stack.proxy_pid] if target == "proxy" else []
    return bench.loadgen.run(
        {
            "op": "streams",
            "target": tgt.as_job(),
            "path": "/v1/chat/completions",
            "bodies": _bodies(p.pace_streams),
            "concurrency": p.pace_streams,
            "spread_s": spread,
            "duration_s": window,
            "verify": True,
            "watch_pids": pids,
        },
        timeout=spread + window + 120,
    )


class _Check:
    """Accumulates delivery checks across rounds."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.verified = 0
        self.mismatched = 0
        self.problems: list[str] = []
        self._expected: dict[str, str] = {}

    def expected(self, worker: str) -> str:
        if worker not in self._expected:
            i = int(worker)
            messages = _bodies(i + 1)[i]["messages"]
            self._expected[worker] = expected_text(CHAT_MODEL, messages, self.tokens)
        return self._expected[worker]

    def compare(self, direct: dict[str, Any], proxy: dict[str, Any]) -> None:
        want_chunks = str(self.tokens + 1)
        for name, res in (("direct", direct), ("proxy", proxy)):
            bad = {k: v for k, v in res["chunk_counts"].items() if k != want_chunks}
            if bad:
                self._problem(f"{name}: streams with chunk counts {bad} (want {want_chunks})")
            for worker, text in res["texts"].items():
                if text != self.expected(worker):
                    self._problem(f"{name}: worker {worker} text differs from the simulator's")
            for sample in res["error_samples"]:
                self._problem(f"{name}: {sample}")
        for worker, digests in proxy["digests"].items():
            reference = set(direct["digests"].get(worker, {}))
            for digest, count in digests.items():
                if len(reference) != 1 or digest not in reference:
                    self.mismatched += count
                    self._problem(f"worker {worker}: proxy digest {digest} vs direct {reference}")
                else:
                    self.verified += count

    def _problem(self, text: str) -> None:
        if len(self.problems) < 10:
            self.problems.append(text)


def _round_pair(
    bench: Bench, stack: ProxyStack, delay: float, window: float, i: int, check: _Check
) -> tuple[dict[str, Any], dict[str, Any]]:
    order = ("direct", "proxy") if i % 2 == 0 else ("proxy", "direct")
    res = {name: _job(stack, name, bench, delay, window) for name in order}
    check.compare(res["direct"], res["proxy"])
    return res["direct"], res["proxy"]


def run(bench: Bench) -> ScenarioResult:
    result = ScenarioResult(NAME, TITLE)
    p = bench.profile
    sim_env = {"SIM_TOKEN_DELAY": str(p.pace_delay_s), "SIM_NUM_TOKENS": str(p.pace_tokens)}
    check = _Check(p.pace_tokens)
    tps: list[float] = []
    ttfc50: list[float] = []
    ttfc99: list[float] = []
    lg_cpu: list[float] = []
    proxy_cpu: list[float] = []
    direct_rate: list[float] = []
    with bench.stack(sim_env, name="pace") as stack:
        for i in range(p.rounds):
            d, x = _round_pair(bench, stack, p.pace_delay_s, p.pace_window_s, i, check)
            tps.append(ratio(x["chunks"], d["chunks"]))
            direct_rate.append(d["chunks"] / d["window_s"])
            ttfc50.append(percentile(x["ttfc_ms"], 50) - percentile(d["ttfc_ms"], 50))
            ttfc99.append(percentile(x["ttfc_ms"], 99) - percentile(d["ttfc_ms"], 99))
            lg_cpu.append(x["loadgen_cpu_pct"])
            cpu = sum(x["cpu_s"].values())
            proxy_cpu.append(100.0 * cpu / x["window_s"])
    ms = p.pace_delay_s * 1000
    result.add(f"tokens/s via proxy / direct @{ms:g} ms", "x", tps, Target(">=", _KEEP_UP))
    result.add("added time to first chunk p50", "ms", ttfc50, Target("<", 2.0))
    result.add("added time to first chunk p99", "ms", ttfc99)
    result.add("direct tokens/s (context)", "tok/s", direct_rate)
    result.add("proxy CPU during the window", "%", proxy_cpu)
    result.add("load generator CPU, proxy run", "%", lg_cpu)
    result.add("streams verified (same chunks, same order)", "streams", [check.verified])
    result.add(
        "streams with a different chunk sequence", "streams", [check.mismatched], Target("<=", 0)
    )
    result.notes += check.problems
    result.notes.append(
        f"{p.pace_streams} streams x {p.pace_tokens} tokens at {ms:g} ms/token, starts spread "
        f"over {p.pace_tokens * p.pace_delay_s:g} s, {p.pace_window_s:g} s window, "
        f"{p.rounds} rounds"
    )
    _step_down(bench, result)
    return result


def _step_down(bench: Bench, result: ScenarioResult) -> None:
    """Step the token delay down until the proxy falls behind (ratio < 0.98)."""
    p = bench.profile
    if not p.pace_steps_s:
        return
    steps: dict[str, Any] = {}
    fell_behind: float = math.nan
    for delay in p.pace_steps_s:
        check = _Check(p.pace_tokens)
        sim_env = {"SIM_TOKEN_DELAY": str(delay), "SIM_NUM_TOKENS": str(p.pace_tokens)}
        window = max(2.0 * p.pace_tokens * delay, 3.0)
        ratios: list[float] = []
        rates: list[float] = []
        with bench.stack(sim_env, name=f"pace-{delay:g}") as stack:
            for i in range(p.pace_step_rounds):
                d, x = _round_pair(bench, stack, delay, window, i, check)
                ratios.append(ratio(x["chunks"], d["chunks"]))
                rates.append(d["chunks"] / d["window_s"])
        ms = delay * 1000
        result.add(f"step: tokens/s via proxy / direct @{ms:g} ms", "x", ratios)
        steps[f"{ms:g}ms"] = {
            "ratio_median": summarize(ratios).median,
            "direct_tokens_per_s": summarize(rates).median,
            "mismatched_streams": check.mismatched,
        }
        if check.mismatched:
            result.notes.append(
                f"@{ms:g} ms: {check.mismatched} streams differed: {check.problems}"
            )
        if summarize(ratios).median < _KEEP_UP:
            fell_behind = ms
            break
    result.extra["steps"] = steps
    result.add(
        "falls behind at (ratio < 0.98)",
        "ms/token",
        [fell_behind],
        note="n/a: kept up at every step tried" if math.isnan(fell_behind) else "",
    )
    if math.isnan(fell_behind):
        result.notes.append(
            f"kept up (ratio >= {_KEEP_UP}) at every pace down to {p.pace_steps_s[-1] * 1000:g} "
            "ms/token"
        )
