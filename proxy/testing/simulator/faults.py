"""Fault-injection and pacing settings, read once from the environment at start.

This is a contract other tests rely on. Every variable is optional:

``SIM_START_DELAY`` (float seconds, default 0)
    Sleep before binding the port (a slow start). SIGTERM/SIGINT during the delay exit 0.
``SIM_EXIT_AT_START`` (int exit code, unset by default)
    After the start delay, print ``Error: listen tcp <addr>: simulated start failure`` to
    stderr and exit with this code without ever binding.
``SIM_PULL_FAILURES`` (int N, default 0) and ``SIM_PULL_FAILURE_MODE`` (default ``http500``)
    The first N ``/api/pull`` requests fail, whatever model they name:
    ``http500`` → HTTP 500 ``{"error": "..."}`` before any progress;
    ``cut`` → HTTP 200, ``pulling manifest`` and two layer-progress lines, then the connection is
    dropped without the terminating chunk; ``inband`` → HTTP 200, the same lines, then
    ``{"error":"max retries exceeded: ..."}`` and a clean end of stream (with ``stream:false``:
    HTTP 500 ``{"error": "max retries exceeded: ..."}``, as Ollama does).
``SIM_STATE_DIR`` (directory, unset by default)
    Persist fault counters there so they survive restarts: ``pull_failures`` (failures injected
    so far, so N is a total across restarts) and ``crashed`` (the crash-once marker). Every pull
    outcome is also appended to ``pulls.log`` there, one JSON object per line with keys
    ``time``, ``pid``, ``model``, ``outcome`` (``success`` | ``failed``), ``reason``
    (``null`` | ``http500`` | ``cut`` | ``inband`` | ``not_found``) and ``downloaded`` (true when
    a successful pull added a model that was not already present).
``SIM_PULL_DELAY`` (float seconds, default 0.01)
    Pause between pull progress lines.
``SIM_PULL_STEPS`` (int, default 5)
    Progress lines per layer for a layer not yet on disk (``completed`` grows to ``total``).
``SIM_CRASH_AFTER`` (int N, unset by default)
    The first N inference requests run normally; the (N+1)-th kills the process with
    ``os._exit(1)``: a streamed response dies right after its first chunk reached the socket, a
    non-streamed one before any response byte. Inference requests are chat/generate/embed on
    either API that pass validation and are not load/unload-only (empty prompt/messages/input).
    With ``SIM_STATE_DIR`` the crash happens once: the ``crashed`` marker disables it after.
``SIM_TOKEN_DELAY`` (float seconds, default 0)
    Pause before each generated token (streamed or not).
``SIM_NUM_TOKENS`` (int, default 12)
    Tokens per completion, unless ``options.num_predict`` / ``max_tokens`` is smaller (then
    ``done_reason`` is ``length``).
``SIM_STREAM_CUT_AFTER`` (int K, unset by default)
    Every streamed inference response is dropped (connection closed, no terminating chunk)
    after its K-th chunk: an NDJSON line or an SSE event.
``SIM_STREAM_ERROR_AFTER`` (int K, unset by default)
    Every streamed inference response fails after its K-th chunk the way Ollama reports a
    runner failure mid-stream: native APIs get an in-band ``{"error": "..."}`` line; the OpenAI
    API gets what Ollama's middleware makes of that line (an empty chunk, no ``[DONE]``).
``SIM_LOAD_DELAY`` (float seconds, default 0)
    Time to "load" a model on first use (or after it expired); reported as ``load_duration``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

__all__ = ["Faults", "PullFailureMode"]

_T = TypeVar("_T")


class PullFailureMode(enum.StrEnum):
    """How an injected pull failure shows itself."""

    HTTP500 = "http500"
    CUT = "cut"
    INBAND = "inband"


@dataclass(frozen=True, slots=True)
class Faults:
    """Fault and pacing settings; see the module docstring for the environment contract."""

    start_delay: float = 0.0
    exit_at_start: int | None = None
    pull_failures: int = 0
    pull_failure_mode: PullFailureMode = PullFailureMode.HTTP500
    state_dir: Path | None = None
    pull_delay: float = 0.01
    pull_steps: int = 5
    crash_after: int | None = None
    token_delay: float = 0.0
    num_tokens: int = 12
    stream_cut_after: int | None = None
    stream_error_after: int | None = None
    load_delay: float = 0.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Faults:
        """Read the ``SIM_*`` variables.

        Raises:
            ValueError: a variable is malformed; the message names it.
        """

        def get(key: str, convert: Callable[[str], _T], default: _T) -> _T:
            raw = environ.get(key, "").strip()
            if not raw:
                return default
            try:
                return convert(raw)
            except ValueError:
                raise ValueError(f"{key}: invalid value {raw!r}") from None

        state_dir = environ.get("SIM_STATE_DIR", "").strip()
        faults = cls(
            start_delay=get("SIM_START_DELAY", float, 0.0),
            exit_at_start=get("SIM_EXIT_AT_START", int, None),
            pull_failures=get("SIM_PULL_FAILURES", int, 0),
            pull_failure_mode=get(
                "SIM_PULL_FAILURE_MODE", PullFailureMode, PullFailureMode.HTTP500
            ),
            state_dir=Path(state_dir) if state_dir else None,
            pull_delay=get("SIM_PULL_DELAY", float, 0.01),
            pull_steps=get("SIM_PULL_STEPS", int, 5),
            crash_after=get("SIM_CRASH_AFTER", int, None),
            token_delay=get("SIM_TOKEN_DELAY", float, 0.0),
            num_tokens=get("SIM_NUM_TOKENS", int, 12),
            stream_cut_after=get("SIM_STREAM_CUT_AFTER", int, None),
            stream_error_after=get("SIM_STREAM_ERROR_AFTER", int, None),
            load_delay=get("SIM_LOAD_DELAY", float, 0.0),
        )
        if faults.pull_steps < 1:
            raise ValueError("SIM_PULL_STEPS: must be at least 1")
        if min(faults.num_tokens, faults.pull_failures) < 0:
            raise ValueError("SIM_NUM_TOKENS and SIM_PULL_FAILURES must not be negative")
        return faults
