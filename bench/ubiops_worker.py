"""One UbiOps request process, for scenario 4: a ``Deployment`` driven over a pipe.

Run as ``python -m bench.ubiops_worker ours|tutorial``. ``ours`` loads
``deployment_package/deployment.py`` the way UbiOps does (``process_id`` 1: it only waits for
the already running proxy, it does not start one); ``tutorial`` loads
:mod:`bench.tutorial_baseline`. The parent (:class:`DeploymentWorker`) sends
``{"op": "run", "data": ..., "requests": N}``; the worker serves the N requests one after the
other, as a request process does, with a ``streaming_update`` that only counts, then answers
with the chunks relayed, the wall time and the CPU time of the whole process (all threads).

The return value is turned into text as the UbiOps agent must for a plain output
(``json.dumps`` unless it already is a string); that work is counted, for both.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.loadgen import LoadGen
from proxy.testing.ubiops_process import load_deployment

__all__ = ["DeploymentWorker"]

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / "deployment_package"


class DeploymentWorker(LoadGen):
    """The parent's handle on one worker process (same line protocol as the load generator)."""

    def __init__(self, impl: str, env: Mapping[str, str]) -> None:
        super().__init__()
        self._impl = impl
        self._env = dict(env)

    def start(self) -> None:
        if self._proc is not None:
            return
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.ubiops_worker", self._impl],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self._env,
            cwd=REPO,
        )
        self.run({"op": "ping"}, timeout=120)


def _load(impl: str) -> Any:
    context = {"process_id": 1, "deployment": "bench", "version": "v1"}
    if impl == "tutorial":
        from bench.tutorial_baseline import Deployment

        return Deployment(str(REPO / "bench"), context)
    return load_deployment(PACKAGE_DIR, context)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _serve(impl: str) -> None:
    # stdout carries the protocol: everything the deployment prints goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    deployment = _load(impl)
    for line in sys.stdin.buffer:
        job = json.loads(line)
        if job["op"] == "exit":
            break
        try:
            if job["op"] == "ping":
                result: dict[str, Any] = {"pid": os.getpid()}
            else:
                result = _run(deployment, job["data"], int(job["requests"]))
            result["ok"] = True
        except Exception as exc:
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(result).encode() + b"\n")
        out.flush()
    stop = getattr(deployment, "stop", None)
    if callable(stop):
        with contextlib.suppress(Exception):
            stop()


def _run(deployment: Any, data: str, requests: int) -> dict[str, Any]:
    counts = {"chunks": 0, "bytes": 0}

    def streaming_update(text: str) -> None:
        counts["chunks"] += 1
        counts["bytes"] += len(text)

    per_request: list[int] = []
    outputs: list[str] = []
    cpu0, t0 = _cpu(), time.perf_counter()
    for _ in range(requests):
        before = counts["chunks"]
        context = {"process_id": 1, "request_mode": "express", "streaming_update": streaming_update}
        output = deployment.request(data, context)
        text = output if isinstance(output, str) else json.dumps(output)
        per_request.append(counts["chunks"] - before)
        outputs.append(text)
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    output_items = [len(json.loads(t)) if t.startswith("[") else 1 for t in outputs]
    return {
        "chunks": counts["chunks"],
        "bytes": counts["bytes"],
        "wall_s": wall,
        "cpu_s": cpu,
        "chunks_per_request": sorted(set(per_request)),
        "output_items": sorted(set(output_items)),
    }


if __name__ == "__main__":
    _serve(sys.argv[1])
