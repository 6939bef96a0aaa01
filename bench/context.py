"""What every scenario gets: the run's sizes (full or smoke), the load generator, a work
directory for logs and model stores, and a shared zero-delay proxy stack."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import LoadGen
from bench.stack import CHAT_MODEL, EMBED_MODEL, ProxyStack

__all__ = ["Bench", "Profile", "chat_body", "embed_body", "full_profile", "smoke_profile"]

STREAM_TOKENS = 200
"""Tokens per streamed answer (``SIM_NUM_TOKENS``); non-streamed answers ask for fewer."""
SHORT_TOKENS = 12
"""``max_tokens`` of the non-streamed chat requests (the simulator's default length)."""


@dataclass(frozen=True, slots=True)
class Profile:
    """Sizes of one run. Every figure is a per-round comparison; ``rounds`` sets the spread."""

    name: str
    rounds: int
    latency_requests: int
    latency_warmup: int
    saturate_concurrency: int
    saturate_warmup_s: float
    saturate_duration_s: float
    pace_streams: int
    pace_tokens: int
    pace_delay_s: float
    pace_window_s: float
    pace_steps_s: tuple[float, ...]
    pace_step_rounds: int
    ubiops_requests: int
    readiness_rounds: int
    readiness_start_delay_s: float
    readiness_pull_delay_s: float
    memory_rounds: int
    memory_window_s: float
    litellm: bool


def full_profile() -> Profile:
    return Profile(
        name="full",
        rounds=5,
        latency_requests=400,
        latency_warmup=30,
        saturate_concurrency=16,
        saturate_warmup_s=0.5,
        saturate_duration_s=2.5,
        pace_streams=64,
        pace_tokens=STREAM_TOKENS,
        pace_delay_s=0.02,
        pace_window_s=8.0,
        pace_steps_s=(0.01, 0.005, 0.002, 0.001),
        pace_step_rounds=3,
        ubiops_requests=40,
        readiness_rounds=8,
        readiness_start_delay_s=0.5,
        readiness_pull_delay_s=0.05,
        memory_rounds=3,
        memory_window_s=3.0,
        litellm=True,
    )


def smoke_profile() -> Profile:
    return Profile(
        name="smoke",
        rounds=2,
        latency_requests=25,
        latency_warmup=5,
        saturate_concurrency=4,
        saturate_warmup_s=0.1,
        saturate_duration_s=0.3,
        pace_streams=8,
        pace_tokens=20,
        pace_delay_s=0.005,
        pace_window_s=0.4,
        pace_steps_s=(),
        pace_step_rounds=1,
        ubiops_requests=3,
        readiness_rounds=1,
        readiness_start_delay_s=0.1,
        readiness_pull_delay_s=0.01,
        memory_rounds=1,
        memory_window_s=0.3,
        litellm=False,
    )


def chat_body(
    *, stream: bool, max_tokens: int | None = None, text: str = "Hello"
) -> dict[str, Any]:
    """An OpenAI chat request for the bench's chat model."""
    body: dict[str, Any] = {
        "model": CHAT_MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": text},
        ],
        "stream": stream,
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def embed_body(text: str = "The quick brown fox jumps over the lazy dog.") -> dict[str, Any]:
    """An OpenAI embeddings request for the bench's embedding model."""
    return {"model": EMBED_MODEL, "input": text}


@dataclass
class Bench:
    """Shared state of one bench run; :meth:`close` stops everything it started."""

    profile: Profile
    loadgen: LoadGen
    workdir: Path
    aa: bool = False
    _zero: ProxyStack | None = field(default=None, repr=False)

    @property
    def smoke(self) -> bool:
        return self.profile.name == "smoke"

    def stack(
        self,
        sim_env: dict[str, str] | None = None,
        *,
        models_dir: Path | None = None,
        extra_env: dict[str, str] | None = None,
        name: str = "proxy",
    ) -> ProxyStack:
        """A new (not yet started) proxy stack; A/A mode makes it a lone simulator."""
        return ProxyStack(
            self.workdir,
            sim_env,
            models_dir=models_dir,
            extra_env=extra_env,
            aa=self.aa,
            name=name,
        )

    def zero_stack(self) -> ProxyStack:
        """The shared stack with a zero-delay backend and 200-token streams (started once)."""
        if self._zero is None:
            stack = self.stack({"SIM_NUM_TOKENS": str(STREAM_TOKENS)}, name="zero")
            stack.start()
            self._zero = stack
        return self._zero

    def close(self) -> None:
        if self._zero is not None:
            self._zero.stop()
            self._zero = None
