"""Scenario 6: readiness and cold start.

Method, per round (the backend's start is slowed by ``SIM_START_DELAY`` = D):

* the simulator alone: spawn → ``/api/version`` 200 (``T_sim``);
* the proxy, models already on disk: spawn, then one polling loop (every ~1 ms) watches both the
  proxy's own simulator (``/api/version`` on ``OLLAMA_INTERNAL_HOST``) and the proxy's
  ``/readyz``. *Readiness lag* = first ``/readyz`` 200 minus first backend answer (target
  < 100 ms). Then a chat request: spawn → first answered request;
* the proxy with an empty model store, so both models are pulled (``SIM_PULL_DELAY`` paces the
  pull's progress lines): spawn → first answered request.

Round i adds ``i/rounds x 100 ms`` to D, so the rounds cover every phase of the proxy's own
poll of the backend (its interval grows to at most 20 ms): the spread shows the worst case.

The tutorial's readiness is its fixed ``time.sleep(3)`` after ``Popen``: it proceeds 3 s after
spawning whatever the backend does, so its lag behind the backend is ``3000 ms - T_sim`` (and
if the backend takes longer than 3 s, its pulls fail). That figure is computed per round from
the measured ``T_sim``, not simulated.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.context import SHORT_TOKENS, Bench, chat_body
from bench.report import ScenarioResult, Target
from bench.stack import API_KEY, ProxyStack, SimulatorStack, http_post
from bench.stats import ratio
from proxy.testing.harness import http_json

NAME = "readiness"
TITLE = "Readiness lag and cold start"

_TUTORIAL_SLEEP_MS = 3000.0
_TIMEOUT = 60.0
_PHASE_SPAN = 0.1


def _observe(stack: ProxyStack) -> tuple[float, float, float]:
    """Spawn ``stack``; return (backend up, /readyz 200, first answer), each in ms after spawn."""
    body = chat_body(stream=False, max_tokens=SHORT_TOKENS)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    stack.spawn()
    t0 = stack.spawned_at
    backend = ready = 0.0
    deadline = t0 + _TIMEOUT
    while not ready:
        if not backend:
            status, _ = http_json(f"{stack.direct_url}/api/version", timeout=1.0)
            if status == 200:
                backend = time.monotonic()
        status, _ = http_json(f"{stack.proxy_url}/readyz", timeout=1.0)
        if status == 200:
            ready = time.monotonic()
            break
        stack.check_running()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the proxy was not ready within {_TIMEOUT:g} s; see {stack.log}")
        time.sleep(0.001)
    http_post(f"{stack.proxy_url}/v1/chat/completions", body, headers)
    answered = time.monotonic()
    if not backend:  # ready before we saw the backend: it was up by then at the latest
        backend = ready
    return (backend - t0) * 1000, (ready - t0) * 1000, (answered - t0) * 1000


def _sim_start_ms(bench: Bench, sim_env: dict[str, str], models: Path) -> float:
    sim = SimulatorStack(bench.workdir, sim_env, models_dir=models, name="ready-sim")
    sim.spawn()
    try:
        status = 0
        deadline = sim.spawned_at + _TIMEOUT
        while status != 200:
            status, _ = http_json(f"{sim.url}/api/version", timeout=1.0)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the simulator did not start; see {sim.log_path}")
            if status != 200:
                time.sleep(0.001)
        return (time.monotonic() - sim.spawned_at) * 1000
    finally:
        sim.stop()


def run(bench: Bench) -> ScenarioResult:
    result = ScenarioResult(NAME, TITLE)
    if bench.aa:
        result.skipped = "needs the proxy (not run in A/A mode)"
        return result
    p = bench.profile
    delay = p.readiness_start_delay_s
    present = bench.workdir / "ready-present-models"
    with SimulatorStack(bench.workdir, models_dir=present, name="ready-seed"):
        pass  # start() pulled both models into `present`
    sim_env = {"SIM_START_DELAY": str(delay), "SIM_PULL_DELAY": str(p.readiness_pull_delay_s)}
    lag, tut_lag, tut_ratio, start_extra, cold_present, cold_pulls, pull_cost = (
        [] for _ in range(7)
    )
    for i in range(p.readiness_rounds):
        # Shift the backend's start across several poll periods of the proxy (20 ms at most
        # between polls), so the rounds sample every phase of its poll instead of the same one.
        sim_env["SIM_START_DELAY"] = f"{delay + _PHASE_SPAN * i / p.readiness_rounds:.4f}"
        t_sim = _sim_start_ms(bench, sim_env, present)
        stack = bench.stack(sim_env, models_dir=present, name=f"ready-{i}")
        try:
            backend, ready, answered = _observe(stack)
        finally:
            stack.stop()
        fresh = bench.workdir / f"ready-empty-models-{i}"
        stack = bench.stack(sim_env, models_dir=fresh, name=f"ready-pull-{i}")
        try:
            _, _, answered_pulls = _observe(stack)
        finally:
            stack.stop()
        lag.append(ready - backend)
        tut = _TUTORIAL_SLEEP_MS - t_sim
        tut_lag.append(tut)
        tut_ratio.append(ratio(tut, max(ready - backend, 1.0)))
        start_extra.append(ready - t_sim)
        cold_present.append(answered)
        cold_pulls.append(answered_pulls)
        pull_cost.append(answered_pulls - answered)
    result.add("backend answering -> /readyz 200", "ms", lag, Target("<", 100.0))
    result.add("tutorial: backend answering -> proceeds (3 s sleep)", "ms", tut_lag)
    result.add("lag, tutorial / ours", "x", tut_ratio)
    result.add("proxy spawn->/readyz minus sim spawn->/api/version", "ms", start_extra)
    result.add("cold start to first answer, models present", "ms", cold_present)
    result.add("cold start to first answer, with pulls", "ms", cold_pulls)
    result.add("pulls add", "ms", pull_cost)
    result.notes.append(
        f"SIM_START_DELAY={delay:g} s + i/rounds x {_PHASE_SPAN:g} s, "
        f"SIM_PULL_DELAY={p.readiness_pull_delay_s:g} s; "
        "lag is measured from the first answer of the proxy's own simulator; ratio denominators "
        "floored at 1 ms"
    )
    return result
