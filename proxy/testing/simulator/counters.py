"""Fault counters, the crash-once marker and ``pulls.log``, kept in ``SIM_STATE_DIR`` if set."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .faults import Faults, PullFailureMode

__all__ = ["PULL_LOG", "Counters", "read_pull_log"]

PULL_LOG = "pulls.log"
_PULL_FAILURES = "pull_failures"
_CRASHED = "crashed"


class Counters:
    """Decides which requests fail, and records pull outcomes."""

    def __init__(self, faults: Faults) -> None:
        self._faults = faults
        self._dir = faults.state_dir
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
        self._inference = 0
        self._pull_failures = self._read_int(_PULL_FAILURES)

    def begin_inference(self) -> bool:
        """Count one inference request; ``True`` if this one must crash the process."""
        self._inference += 1
        limit = self._faults.crash_after
        if limit is None or self._inference != limit + 1:
            return False
        if self._dir is not None:
            marker = self._dir / _CRASHED
            if marker.exists():
                return False
            marker.write_text(f"{os.getpid()}\n")
        return True

    def take_pull_failure(self) -> PullFailureMode | None:
        """Count one pull request; the failure mode if this one must fail."""
        if self._pull_failures >= self._faults.pull_failures:
            return None
        self._pull_failures += 1
        if self._dir is not None:
            (self._dir / _PULL_FAILURES).write_text(f"{self._pull_failures}\n")
        return self._faults.pull_failure_mode

    def record_pull(self, model: str, outcome: str, reason: str | None, downloaded: bool) -> None:
        """Append one line to ``pulls.log`` (only when ``SIM_STATE_DIR`` is set)."""
        if self._dir is None:
            return
        line = {
            "time": time.time(),
            "pid": os.getpid(),
            "model": model,
            "outcome": outcome,
            "reason": reason,
            "downloaded": downloaded,
        }
        with (self._dir / PULL_LOG).open("a", encoding="utf-8") as log:
            log.write(json.dumps(line) + "\n")

    def _read_int(self, name: str) -> int:
        if self._dir is None:
            return 0
        try:
            return int((self._dir / name).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0


def read_pull_log(state_dir: Path) -> list[dict[str, Any]]:
    """Every record in ``<state_dir>/pulls.log``, oldest first (empty if there is none)."""
    path = state_dir / PULL_LOG
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
