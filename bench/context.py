"""What every scenario gets: the run's sizes (full or smoke), the load generator, a work
directory for logs and model stores, a shared zero-delay proxy stack, and nginx and a bare
aiohttp hop in front of that stack's backend (the floor anchors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import LoadGen
from bench.stack import (
    CHAT_MODEL,
    EMBED_MODEL,
    BareHopStack,
    NginxStack,
    ProxyStack,
    StackError,
    find_nginx,
)

__all__ = [
    "Bench",
    "Profile",
    "chat_body",
    "embed_body",
    "full_profile",
    "messages_body",
    "smoke_profile",
]

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
    real_rounds: int
    real_streams: int
    real_stream_tokens: int
    real_chats: int
    real_embeddings: int


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
        real_rounds=5,
        real_streams=4,
        real_stream_tokens=64,
        real_chats=6,
        real_embeddings=30,
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
        real_rounds=1,
        real_streams=1,
        real_stream_tokens=8,
        real_chats=1,
        real_embeddings=3,
    )


def chat_body(
    *, stream: bool, max_tokens: int | None = None, text: str = "Hello", model: str = CHAT_MODEL
) -> dict[str, Any]:
    """An OpenAI chat request for the bench's chat model (or ``model``)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": text},
        ],
        "stream": stream,
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def messages_body(*, max_tokens: int, text: str = "Hello") -> dict[str, Any]:
    """An Anthropic Messages request (not streamed) for the bench's chat model."""
    return {
        "model": CHAT_MODEL,
        "system": "You are a helpful assistant.",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
    }


def embed_body(
    text: str = "The quick brown fox jumps over the lazy dog.", model: str = EMBED_MODEL
) -> dict[str, Any]:
    """An OpenAI embeddings request for the bench's embedding model (or ``model``)."""
    return {"model": model, "input": text}


@dataclass
class Bench:
    """Shared state of one bench run; :meth:`close` stops everything it started."""

    profile: Profile
    loadgen: LoadGen
    workdir: Path
    aa: bool = False
    named: tuple[str, ...] = ()
    """The scenarios asked for by name (``--only``); empty when all run."""
    _zero: ProxyStack | None = field(default=None, repr=False)
    _nginx: NginxStack | None = field(default=None, repr=False)
    _nginx_missing: str | None = field(default=None, repr=False)
    _bare_hop: BareHopStack | None = field(default=None, repr=False)

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

    def nginx(self) -> NginxStack | None:
        """nginx in front of the shared stack's backend (started once), or None when it cannot
        run; :attr:`nginx_missing` then says why."""
        if self._nginx is None and self._nginx_missing is None:
            try:
                stack = NginxStack(self.workdir, self.zero_stack().direct_url, find_nginx())
                stack.start()
            except StackError as exc:
                self._nginx_missing = str(exc)
            else:
                self._nginx = stack
        return self._nginx

    @property
    def nginx_missing(self) -> str | None:
        """Why :meth:`nginx` gave None (None when it runs or was not asked for)."""
        return self._nginx_missing

    def bare_hop(self) -> BareHopStack:
        """The bare aiohttp hop in front of the shared stack's backend (started once)."""
        if self._bare_hop is None:
            stack = BareHopStack(self.workdir, self.zero_stack().direct_url)
            stack.start()
            self._bare_hop = stack
        return self._bare_hop

    def close(self) -> None:
        if self._bare_hop is not None:
            self._bare_hop.stop()
            self._bare_hop = None
        if self._nginx is not None:
            self._nginx.stop()
            self._nginx = None
        if self._zero is not None:
            self._zero.stop()
            self._zero = None
