"""Inference semantics shared by both APIs: validation, load/unload, token runs and embeddings.

Request handling follows Ollama's ``GenerateHandler``, ``ChatHandler``, ``EmbedHandler`` and
``EmbeddingsHandler`` step by step, including which error each malformed request gets. The
OpenAI routes translate their bodies into native ones and reuse these functions, as Ollama's
middleware does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from .generation import Prompt, embed_vector, generate_tokens, prompt_token_count, text_token_count
from .names import ModelName
from .registry import ModelKind
from .runtime import Simulator
from .store import StoredModel
from .timeutil import parse_keep_alive
from .wire import ApiError, get_field

__all__ = [
    "Finished",
    "Immediate",
    "Run",
    "embed",
    "embeddings_legacy",
    "plan_chat",
    "plan_generate",
]


@dataclass(frozen=True, slots=True)
class Finished:
    """The final chunk's data: why generation stopped, token counts and durations (ns)."""

    done_reason: str
    prompt_eval_count: int
    eval_count: int
    total_duration: int
    load_duration: int
    prompt_eval_duration: int
    eval_duration: int
    context: list[int] | None

    def metrics(self) -> dict[str, int]:
        """Ollama's ``Metrics`` fields, in Go field order."""
        return {
            "total_duration": self.total_duration,
            "load_duration": self.load_duration,
            "prompt_eval_count": self.prompt_eval_count,
            "prompt_eval_duration": self.prompt_eval_duration,
            "eval_count": self.eval_count,
            "eval_duration": self.eval_duration,
        }


@dataclass(frozen=True, slots=True)
class Immediate:
    """A response without generation: the model was loaded (``load``) or unloaded (``unload``)."""

    label: str
    done_reason: str


@dataclass(slots=True)
class Run:
    """One generation: token strings, then a :class:`Finished`; call :meth:`release` after."""

    sim: Simulator
    model: StoredModel
    label: str
    tokens: list[str]
    done_reason: str
    prompt_eval_count: int
    keep_alive: float | None
    stream: bool
    crash: bool
    start_ns: int
    load_ns: int
    with_context: bool

    async def events(self) -> AsyncIterator[str | Finished]:
        """The tokens, paced by ``SIM_TOKEN_DELAY``, then the final data."""
        delay = self.sim.faults.token_delay
        eval_start = time.perf_counter_ns()
        for token in self.tokens:
            if delay > 0:
                await asyncio.sleep(delay)
            yield token
        now = time.perf_counter_ns()
        total = len(self.tokens) + self.prompt_eval_count
        yield Finished(
            done_reason=self.done_reason,
            prompt_eval_count=self.prompt_eval_count,
            eval_count=len(self.tokens),
            total_duration=max(now - self.start_ns, 1),
            load_duration=self.load_ns,
            prompt_eval_duration=self.prompt_eval_count * 1_000,
            eval_duration=max(now - eval_start, 1),
            context=list(range(1, total + 1)) if self.with_context else None,
        )

    def release(self) -> None:
        """Hand the model back to the scheduler (starts its keep-alive clock)."""
        self.sim.scheduler.release(self.model, self.keep_alive)


@dataclass(frozen=True, slots=True)
class _Common:
    label: str
    model: StoredModel
    keep_alive: float | None
    stream: bool
    options: dict[str, Any]


def _common(
    sim: Simulator, body: dict[str, Any], struct: str, bad_name: tuple[int, str]
) -> _Common:
    label = get_field(body, "model", str, "", struct)
    stream = get_field(body, "stream", bool, True, struct)
    options = get_field(body, "options", dict, {}, struct)
    try:
        keep_alive = parse_keep_alive(body.get("keep_alive"))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    if ModelName.parse(label) is None:
        raise ApiError(bad_name[0], bad_name[1].format(label=label))
    model = sim.find(label)
    if model is None:
        raise ApiError(404, f"model '{label}' not found")
    return _Common(label, model, keep_alive, stream, options)


def _check_think(body: dict[str, Any], label: str) -> None:
    think = body.get("think")
    if think is True or (isinstance(think, str) and think not in {"", "false", "none"}):
        raise ApiError(400, f'"{label}" does not support thinking')


async def _start(
    sim: Simulator, common: _Common, prompt: Prompt, *, start_ns: int, with_context: bool
) -> Run:
    crash = sim.counters.begin_inference()
    if crash and not common.stream:
        sim.crash()
    count = sim.faults.num_tokens
    reason = "stop"
    limit = common.options.get("num_predict")
    if isinstance(limit, int | float) and not isinstance(limit, bool) and 0 < limit < count:
        count, reason = int(limit), "length"
    load_ns = await sim.scheduler.acquire(common.model, common.keep_alive)
    return Run(
        sim=sim,
        model=common.model,
        label=common.label,
        tokens=generate_tokens(common.model.spec.canonical, prompt, count),
        done_reason=reason,
        prompt_eval_count=prompt_token_count(prompt),
        keep_alive=common.keep_alive,
        stream=common.stream,
        crash=crash,
        start_ns=start_ns,
        load_ns=load_ns,
        with_context=with_context,
    )


async def _load_only(sim: Simulator, common: _Common) -> Immediate:
    await sim.scheduler.acquire(common.model, common.keep_alive)
    sim.scheduler.release(common.model, common.keep_alive)
    return Immediate(common.label, "load")


async def plan_generate(sim: Simulator, body: dict[str, Any]) -> Run | Immediate:
    """Validate a ``/api/generate`` body and load the model (empty prompt: load or unload only)."""
    start_ns = time.perf_counter_ns()
    prompt = get_field(body, "prompt", str, "", "GenerateRequest")
    common = _common(sim, body, "GenerateRequest", (404, "model '{label}' not found"))
    if not prompt and common.keep_alive == 0:
        sim.scheduler.unload(common.model)
        return Immediate(common.label, "unload")
    _check_think(body, common.label)
    if common.model.spec.kind is not ModelKind.CHAT:
        raise ApiError(400, f'"{common.label}" does not support generate')
    if not prompt:
        return await _load_only(sim, common)
    return await _start(sim, common, prompt, start_ns=start_ns, with_context=not body.get("raw"))


async def plan_chat(sim: Simulator, body: dict[str, Any]) -> Run | Immediate:
    """Validate a ``/api/chat`` body and load the model (no messages: load or unload only)."""
    start_ns = time.perf_counter_ns()
    messages = get_field(body, "messages", list, [], "ChatRequest")
    for message in messages:
        if not isinstance(message, dict):
            raise ApiError(
                400,
                "json: cannot unmarshal into Go struct field ChatRequest.messages "
                "of type api.Message",
            )
        for key in ("role", "content"):
            get_field(message, key, str, "", "ChatRequest.messages")
    common = _common(sim, body, "ChatRequest", (400, "model is required"))
    if not messages and common.keep_alive == 0:
        sim.scheduler.unload(common.model)
        return Immediate(common.label, "unload")
    _check_think(body, common.label)
    if common.model.spec.kind is not ModelKind.CHAT:
        raise ApiError(400, f'"{common.label}" does not support chat')
    if not messages:
        return await _load_only(sim, common)
    return await _start(sim, common, messages, start_ns=start_ns, with_context=False)


def _embedding_model(sim: Simulator, label: str, missing: str) -> StoredModel:
    model = sim.find(label)
    if model is None:
        raise ApiError(404, missing)
    if model.spec.kind is not ModelKind.EMBEDDING:
        raise ApiError(400, "this model does not support embeddings")
    return model


async def embed(sim: Simulator, body: dict[str, Any]) -> dict[str, Any]:
    """Handle a ``/api/embed`` body; returns the response object."""
    start_ns = time.perf_counter_ns()
    label = get_field(body, "model", str, "", "EmbedRequest")
    dimensions = get_field(body, "dimensions", int, 0, "EmbedRequest")
    try:
        keep_alive = parse_keep_alive(body.get("keep_alive"))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    raw = body.get("input")
    if isinstance(raw, str):
        inputs = [raw] if raw else []
    elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        inputs = list(raw)
    elif raw is None:
        inputs = []
    else:
        raise ApiError(400, "invalid input type")
    if ModelName.parse(label) is None:
        raise ApiError(404, f"model '{label}' not found")
    model = _embedding_model(sim, label, f"model '{label}' not found")
    if inputs and sim.counters.begin_inference():
        sim.crash()
    load_ns = await sim.scheduler.acquire(model, keep_alive)
    sim.scheduler.release(model, keep_alive)
    if not inputs:
        return {"model": label, "embeddings": []}
    spec = model.spec
    vectors = [
        list(embed_vector(spec.canonical, text, spec.embedding_length, dimensions))
        for text in inputs
    ]
    return {
        "model": label,
        "embeddings": vectors,
        "total_duration": max(time.perf_counter_ns() - start_ns, 1),
        "load_duration": load_ns,
        "prompt_eval_count": sum(text_token_count(text) for text in inputs),
    }


async def embeddings_legacy(sim: Simulator, body: dict[str, Any]) -> dict[str, Any]:
    """Handle a legacy ``/api/embeddings`` body; returns ``{"embedding": [...]}``."""
    label = get_field(body, "model", str, "", "EmbeddingRequest")
    prompt = get_field(body, "prompt", str, "", "EmbeddingRequest")
    try:
        keep_alive = parse_keep_alive(body.get("keep_alive"))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    if ModelName.parse(label) is None:
        raise ApiError(400, "model is required")
    model = _embedding_model(sim, label, f'model "{label}" not found, try pulling it first')
    if prompt and sim.counters.begin_inference():
        sim.crash()
    await sim.scheduler.acquire(model, keep_alive)
    sim.scheduler.release(model, keep_alive)
    if not prompt:
        return {"embedding": []}
    return {
        "embedding": list(embed_vector(model.spec.canonical, prompt, model.spec.embedding_length))
    }
