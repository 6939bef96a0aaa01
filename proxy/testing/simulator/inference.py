"""Inference: how requests are handled, and the responses tests should expect.

Tests predict responses with :func:`expected_tokens`, :func:`expected_text`,
:func:`expected_embedding` and :func:`~proxy.testing.simulator.models.prompt_token_count`; for a
model created with ``/api/copy`` pass the source model's name, as a copy shares its weights.

Requests follow Ollama's ``GenerateHandler``, ``ChatHandler``, ``EmbedHandler`` and
``EmbeddingsHandler`` step by step, including which error each malformed request gets and in
which order: the name (empty, invalid, absent), unload, thinking, then the capabilities the request
needs (``completion``; ``tools`` with tools, ``insert`` with a suffix), which no simulated model
has beyond ``completion`` or ``embedding``. Embeddings work from any model, a chat model's at its
embedding width (576 for ``smollm2:135m``), as real Ollama computes them from its hidden states.
The OpenAI, Responses and Anthropic routes translate their bodies into native ones and reuse these
functions, as Ollama's middleware does.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .config import EXTRA_MODELS, parse_keep_alive
from .models import (
    ModelKind,
    ModelName,
    Prompt,
    Registry,
    embed_vector,
    generate_tokens,
    prompt_token_count,
    text_token_count,
)
from .runtime import Simulator, StoredModel
from .wire import ApiError, get_field, json_kind

__all__ = [
    "Finished",
    "Immediate",
    "Run",
    "embed",
    "embedding_dimension",
    "embeddings_legacy",
    "expected_embedding",
    "expected_text",
    "expected_tokens",
    "plan_chat",
    "plan_generate",
]


@lru_cache(maxsize=8)
def _registry(extra_models: str) -> Registry:
    return Registry(extra_models)


def _resolve(model: str) -> tuple[str, int | None]:
    """Canonical weights name and embedding width (``None`` when unknown) of ``model``."""
    name = ModelName.parse(model)
    if name is None:
        raise ValueError(f"invalid model name: {model!r}")
    spec = _registry(os.environ.get(EXTRA_MODELS.name, "")).lookup(name)
    if spec is None:
        return name.display, None
    return spec.canonical, spec.embedding_length


def expected_tokens(model: str, prompt: Prompt, num_tokens: int) -> list[str]:
    """The tokens the simulator streams for ``model`` and ``prompt`` (string or messages).

    ``num_tokens`` is ``SIM_NUM_TOKENS`` (default 12), or ``num_predict``/``max_tokens`` if smaller.
    Extra models come from ``SIM_EXTRA_MODELS`` in this process's environment.
    """
    return generate_tokens(_resolve(model)[0], prompt, num_tokens)


def expected_text(model: str, prompt: Prompt, num_tokens: int) -> str:
    """The joined response text: ``"".join(expected_tokens(...))``."""
    return "".join(expected_tokens(model, prompt, num_tokens))


def embedding_dimension(model: str) -> int:
    """Native width of a model's embeddings: 384 for ``all-minilm``, and for a chat model its
    hidden size (576 for ``smollm2:135m``), as real Ollama embeds with any model.

    Raises:
        LookupError: ``model`` is not a known model.
    """
    width = _resolve(model)[1]
    if width is None:
        raise LookupError(f"{model!r} is not a known model")
    return width


def expected_embedding(model: str, text: str, dimensions: int | None = None) -> list[float]:
    """The unit float32 vector the simulator returns for ``text`` (exact, JSON or base64)."""
    canonical = _resolve(model)[0]
    return list(embed_vector(canonical, text, embedding_dimension(model), dimensions or 0))


@dataclass(frozen=True, slots=True)
class Finished:
    """The final chunk's data: why generation stopped, token counts and durations (ns)."""

    done_reason: str
    prompt_eval_count: int = 0
    eval_count: int = 0
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_duration: int = 0
    eval_duration: int = 0
    context: list[int] | None = None

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


@dataclass(frozen=True, slots=True)
class _Request:
    """The fields every generate/chat request shares, validated."""

    label: str
    model: StoredModel
    keep_alive: float | None
    stream: bool
    options: dict[str, Any]


@dataclass(slots=True)
class Run:
    """One generation: token strings, then a :class:`Finished`; call :meth:`release` after."""

    sim: Simulator
    request: _Request
    prompt: Prompt
    crash: bool
    start_ns: int
    load_ns: int
    with_context: bool

    @property
    def label(self) -> str:
        """The model as the client named it."""
        return self.request.label

    @property
    def stream(self) -> bool:
        """Whether the client asked for a stream."""
        return self.request.stream

    async def events(self) -> AsyncIterator[str | Finished]:
        """The tokens, paced by ``SIM_TOKEN_DELAY``, then the final data."""
        count, reason = self.sim.faults.num_tokens, "stop"
        limit = self.request.options.get("num_predict")
        if isinstance(limit, int | float) and not isinstance(limit, bool) and 0 < limit < count:
            count, reason = int(limit), "length"
        tokens = generate_tokens(self.request.model.spec.canonical, self.prompt, count)
        prompt_count = prompt_token_count(self.prompt)
        delay = self.sim.faults.token_delay
        eval_start = time.perf_counter_ns()
        for token in tokens:
            if delay > 0:
                await asyncio.sleep(delay)
            yield token
        now = time.perf_counter_ns()
        yield Finished(
            done_reason=reason,
            prompt_eval_count=prompt_count,
            eval_count=len(tokens),
            total_duration=max(now - self.start_ns, 1),
            load_duration=self.load_ns,
            prompt_eval_duration=prompt_count * 1_000,
            eval_duration=max(now - eval_start, 1),
            context=list(range(1, len(tokens) + prompt_count + 1)) if self.with_context else None,
        )

    def release(self) -> None:
        """Hand the model back to the scheduler (starts its keep-alive clock)."""
        self.sim.scheduler.release(self.request.model, self.request.keep_alive)


def _keep_alive(body: dict[str, Any]) -> float | None:
    try:
        return parse_keep_alive(body.get("keep_alive"))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


_INVALID_NAME = "invalid model name"


def _name(label: str, if_empty: tuple[int, str]) -> ModelName:
    """``parseAndValidateModelRef``: ``if_empty`` for a blank name, 400 for an invalid one.

    Raises:
        ApiError: the name is blank or invalid.
    """
    if not label.strip():
        raise ApiError(*if_empty)
    name = ModelName.parse(label)
    if name is None:
        raise ApiError(400, _INVALID_NAME)
    return name


def _request(
    sim: Simulator, body: dict[str, Any], struct: str, if_empty: tuple[int, str]
) -> _Request:
    label = get_field(body, "model", str, "", struct)
    stream = get_field(body, "stream", bool, True, struct)
    options = get_field(body, "options", dict, {}, struct)
    keep_alive = _keep_alive(body)
    top_logprobs = get_field(body, "top_logprobs", int, 0, struct)
    if not 0 <= top_logprobs <= 20:
        raise ApiError(400, "top_logprobs must be between 0 and 20")
    model = sim.store.get(_name(label, if_empty))
    if model is None:
        raise ApiError(404, f"model '{label}' not found")
    return _Request(label, model, keep_alive, stream, options)


def _missing_capabilities(model: StoredModel, wanted: list[str]) -> str | None:
    """``CheckCapabilities``: ``<full name> does not support <what>``, or None."""
    missing = [cap for cap in wanted if cap not in model.spec.capabilities]
    if not missing:
        return None
    return f"{model.name.full} does not support {chr(10).join(missing)}"


async def _plan(
    sim: Simulator,
    body: dict[str, Any],
    request: _Request,
    prompt: Prompt,
    verb: str,
    *,
    start_ns: int,
    with_context: bool,
    also_needs: tuple[str, ...] = (),
) -> Run | Immediate:
    """Unload (no prompt, ``keep_alive: 0``), load only (no prompt), or start a :class:`Run`.

    ``also_needs`` are the capabilities the request needs beyond ``completion``.
    """
    model, keep_alive = request.model, request.keep_alive
    if not prompt and keep_alive == 0:
        sim.scheduler.unload(model)
        return Immediate(request.label, "unload")
    think = body.get("think")
    if think is True or (isinstance(think, str) and think not in {"", "false", "none"}):
        raise ApiError(400, f'"{request.label}" does not support thinking')
    if model.spec.kind is not ModelKind.CHAT:
        raise ApiError(400, f'"{request.label}" does not support {verb}')
    missing = _missing_capabilities(model, ["completion", *also_needs])
    if missing is not None:
        raise ApiError(400, missing)
    if not prompt:
        await sim.scheduler.acquire(model, keep_alive)
        sim.scheduler.release(model, keep_alive)
        return Immediate(request.label, "load")
    crash = sim.counters.begin_inference()
    if crash and not request.stream:
        sim.crash()
    load_ns = await sim.scheduler.acquire(model, keep_alive)
    return Run(sim, request, prompt, crash, start_ns, load_ns, with_context)


async def plan_generate(sim: Simulator, body: dict[str, Any]) -> Run | Immediate:
    """Validate a ``/api/generate`` body and load the model (empty prompt: load or unload only)."""
    start_ns = time.perf_counter_ns()
    struct = "GenerateRequest"
    prompt = get_field(body, "prompt", str, "", struct)
    suffix = get_field(body, "suffix", str, "", struct)
    raw = get_field(body, "raw", bool, False, struct)
    label = get_field(body, "model", str, "", struct)
    request = _request(sim, body, struct, (404, f"model '{label}' not found"))
    if prompt == "" and request.keep_alive == 0:
        return await _plan(
            sim, body, request, prompt, "generate", start_ns=start_ns, with_context=False
        )
    has_extras = get_field(body, "template", str, "", struct) or get_field(
        body, "system", str, "", struct
    )
    if raw and (has_extras or get_field(body, "context", list, [], struct, go_type="[]int")):
        raise ApiError(400, "raw mode does not support template, system, or context")
    return await _plan(
        sim,
        body,
        request,
        prompt,
        "generate",
        start_ns=start_ns,
        with_context=not raw,
        also_needs=("insert",) if suffix else (),
    )


async def plan_chat(sim: Simulator, body: dict[str, Any]) -> Run | Immediate:
    """Validate a ``/api/chat`` body and load the model (no messages: load or unload only)."""
    start_ns = time.perf_counter_ns()
    struct = "ChatRequest"
    messages = get_field(body, "messages", list, [], struct, go_type="[]api.Message")
    for message in messages:
        if not isinstance(message, dict):
            raise ApiError(
                400,
                f"json: cannot unmarshal {json_kind(message)} into Go struct field "
                "ChatRequest.messages of type api.Message",
            )
        for key in ("role", "content"):
            get_field(message, key, str, "", "ChatRequest.messages")
    tools = get_field(body, "tools", list, [], struct, go_type="api.Tools")
    request = _request(sim, body, struct, (400, "model is required"))
    return await _plan(
        sim,
        body,
        request,
        messages,
        "chat",
        start_ns=start_ns,
        with_context=False,
        also_needs=("tools",) if tools else (),
    )


async def _embedding_model(
    sim: Simulator, name: ModelName, label: str, keep_alive: float | None, counted: bool
) -> tuple[StoredModel, int]:
    """Find, count (``counted``: there is input) and load a model for embeddings; the load time.

    Raises:
        ApiError: 404 ``handleScheduleError``'s ``try pulling it first`` when it is absent.
    """
    model = sim.store.get(name)
    if model is None:
        raise ApiError(404, f'model "{label}" not found, try pulling it first')
    if counted and sim.counters.begin_inference():
        sim.crash()
    load_ns = await sim.scheduler.acquire(model, keep_alive)
    sim.scheduler.release(model, keep_alive)
    return model, load_ns


async def embed(sim: Simulator, body: dict[str, Any]) -> dict[str, Any]:
    """Handle a ``/api/embed`` body; returns the response object."""
    start_ns = time.perf_counter_ns()
    struct = "EmbedRequest"
    label = get_field(body, "model", str, "", struct)
    dimensions = get_field(body, "dimensions", int, 0, struct)
    keep_alive = _keep_alive(body)
    name = _name(label, (404, f"model '{label}' not found"))
    raw = body.get("input")
    if isinstance(raw, str):
        inputs = [raw] if raw else []
    elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        inputs = list(raw)
    elif raw is None:
        inputs = []
    else:
        raise ApiError(400, "invalid input type")
    model, load_ns = await _embedding_model(sim, name, label, keep_alive, bool(inputs))
    if not inputs:
        return {"model": label, "embeddings": []}
    spec = model.spec
    return {
        "model": label,
        "embeddings": [
            list(embed_vector(spec.canonical, text, spec.embedding_length, dimensions))
            for text in inputs
        ],
        "total_duration": max(time.perf_counter_ns() - start_ns, 1),
        "load_duration": load_ns,
        "prompt_eval_count": sum(text_token_count(text) for text in inputs),
    }


async def embeddings_legacy(sim: Simulator, body: dict[str, Any]) -> dict[str, Any]:
    """Handle a legacy ``/api/embeddings`` body; returns ``{"embedding": [...]}``."""
    struct = "EmbeddingRequest"
    label = get_field(body, "model", str, "", struct)
    prompt = get_field(body, "prompt", str, "", struct)
    keep_alive = _keep_alive(body)
    name = _name(label, (400, "model is required"))
    model, _ = await _embedding_model(sim, name, label, keep_alive, bool(prompt))
    if not prompt:
        return {"embedding": []}
    return {
        "embedding": list(embed_vector(model.spec.canonical, prompt, model.spec.embedding_length))
    }
