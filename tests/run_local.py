"""The deployment package under UbiOps' own local runner, ``ubiops.utils.run_local``.

Process 0 runs in a subprocess of its own (it owns the proxy and must outlive the other
processes, which the tests run in threads): it answers one request, writes the answer and its
``streaming_update`` chunks to a file, and returns from ``run_local`` when told to on stdin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from proxy.testing.harness import wait_until
from tests.process_tools import alive

__all__ = ["DEPLOYMENT", "ProcessZero", "init_context", "process_zero"]

DEPLOYMENT = "ollama-multi-model-server"

_PROCESS_0 = textwrap.dedent(
    """
    import json, os, sys
    from ubiops.utils import run_local
    init = json.loads(sys.argv[4])
    chunks = []
    request = {"id": "r0", "request_mode": "express", "streaming_update": chunks.append}
    output = run_local(sys.argv[1], sys.argv[2], init_context=init, request_context=request)
    with open(sys.argv[3] + ".tmp", "w") as result:
        json.dump({"output": output, "chunks": chunks}, result)
    os.replace(sys.argv[3] + ".tmp", sys.argv[3])
    sys.stdin.readline()
    """
)


def init_context(process_id: int) -> dict[str, Any]:
    """The ``init_context`` UbiOps gives request process ``process_id`` of a plain deployment."""
    return {
        "deployment": DEPLOYMENT,
        "version": "v1",
        "process_id": process_id,
        "input_type": "plain",
        "output_type": "plain",
    }


@dataclass
class ProcessZero:
    """Request process 0 running one request; :meth:`answer` waits for what it returned."""

    process: subprocess.Popen[str]
    result_file: Path
    log_file: Path
    tree: list[psutil.Process] = field(default_factory=list)

    def answer(self, timeout: float) -> tuple[str, list[str]]:
        """``run_local``'s return value and the chunks sent through ``streaming_update``."""
        wait_until(self.result_file.exists, timeout, "process 0 to answer its request")
        result = json.loads(self.result_file.read_text())
        return result["output"], result["chunks"]

    def children(self) -> list[psutil.Process]:
        """The processes process 0 started (the proxy, Ollama); remembered for the exit check."""
        self.tree = psutil.Process(self.process.pid).children(recursive=True)
        return self.tree


@contextmanager
def process_zero(
    package_dir: Path, data: str, env: dict[str, str], workdir: Path, *, exit_timeout: float
) -> Iterator[ProcessZero]:
    """Run process 0 with ``data`` as its request; on exit, end ``run_local`` and check that it
    returned 0 and that the proxy and Ollama it started exited with it."""
    log_file = workdir / "process-0.log"
    with log_file.open("w") as log:
        zero = ProcessZero(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _PROCESS_0,
                    str(package_dir),
                    data,
                    str(workdir / "process-0.json"),
                    json.dumps(init_context(0)),
                ],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                text=True,
            ),
            workdir / "process-0.json",
            log_file,
        )
        try:
            yield zero
        finally:
            if zero.process.poll() is None:
                zero.process.communicate("\n", timeout=exit_timeout)
    assert zero.process.returncode == 0, log_file.read_text()[-3000:]
    wait_until(
        lambda: not any(alive(p.pid) for p in zero.tree),
        exit_timeout,
        "the proxy and Ollama to exit",
    )
