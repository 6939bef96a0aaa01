"""Deterministic model output: the tokens and embeddings served, and helpers to predict them.

Output depends only on the model's weights (its canonical registry name, so ``smollm2``,
``smollm2:latest`` and ``smollm2:1.7b`` agree) and the input: a generate ``prompt`` string or a
chat ``messages`` list (only each message's ``role`` and text ``content`` matter; OpenAI content
parts are flattened the way Ollama does). Tests predict responses with :func:`expected_tokens`,
:func:`expected_text`, :func:`expected_embedding` and :func:`prompt_token_count`.

For a model created with ``/api/copy`` pass the source model's name: a copy shares its weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from array import array
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from .names import ModelName
from .registry import ModelKind, Registry

__all__ = [
    "Prompt",
    "embed_vector",
    "embedding_dimension",
    "expected_embedding",
    "expected_text",
    "expected_tokens",
    "flatten_messages",
    "generate_tokens",
    "prompt_token_count",
    "text_token_count",
]

Prompt = str | Sequence[Mapping[str, Any]]

_WORD_TEXT = (
    "the of and to in is was that for on with as by at from his her they this had not are but "
    "which one were all there when been more can would their has also who will other into time "
    "only new some could these two may first then do any like now over such our out most many "
    "even made well after should just where those through very about each way must before "
    "under still people because here while back long said river stone light garden morning "
    "window quiet silver forest mountain ocean paper music winter summer bright little green "
    "golden gentle evening story simple careful ancient modern steady open warm clear small "
    "large early later nearby across toward between during without within around behind beyond "
    "village harbor meadow lantern candle bridge valley island orchard market kitchen library "
    "journey answer question reason pattern signal number letter bottle basket ladder pocket "
    "shadow thunder breeze blossom feather pebble ember glacier canyon prairie tundra lagoon "
    "compass anchor beacon voyage harvest season cottage chimney pathway courtyard fountain "
    "statue portrait melody rhythm chorus verse echo whisper murmur laughter courage wisdom "
    "patience kindness honest humble curious eager calm brave swift bold keen fair noble proud "
    "vivid subtle plain rare common certain distant familiar hidden silent restless tender "
    "wild woven carved painted folded gathered scattered polished weathered rising falling "
    "turning waiting listening wandering drifting shining glowing humming singing reading "
    "writing building growing learning dreaming apple orange yellow purple north south east "
    "west autumn spring cloud rain snow wind field flower tree road city home"
)
_WORDS = tuple(_WORD_TEXT.split())
assert len(set(_WORDS)) >= 256, "token picks index _WORDS with a byte"


def flatten_messages(messages: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """``(role, text)`` pairs; OpenAI content parts become one pair per text part, as in Ollama."""
    out: list[tuple[str, str]] = []
    for message in messages:
        role = str(message.get("role", ""))
        content = message.get("content")
        if isinstance(content, list):
            out.extend(
                (role, str(part.get("text", ""))) for part in content if part.get("type") == "text"
            )
        else:
            out.append((role, "" if content is None else str(content)))
    return out


def _seed(canonical: str, prompt: Prompt) -> bytes:
    if isinstance(prompt, str):
        body = "generate\0" + prompt
    else:
        body = "chat\0" + json.dumps(flatten_messages(prompt), ensure_ascii=False)
    return f"{canonical}\0{body}".encode()


def generate_tokens(canonical: str, prompt: Prompt, count: int) -> list[str]:
    """The first ``count`` tokens the weights named ``canonical`` produce for ``prompt``."""
    picks = hashlib.shake_256(_seed(canonical, prompt)).digest(count)
    return [_WORDS[b].capitalize() if i == 0 else " " + _WORDS[b] for i, b in enumerate(picks)]


def text_token_count(text: str) -> int:
    """Tokens the simulator counts for one text: its whitespace-separated words, at least 1."""
    return max(1, len(text.split()))


def prompt_token_count(prompt: Prompt) -> int:
    """``prompt_eval_count`` for a prompt: its word count, or per chat message words + 4."""
    if isinstance(prompt, str):
        return text_token_count(prompt)
    return sum(len(text.split()) + 4 for _, text in flatten_messages(prompt))


@lru_cache(maxsize=4096)
def embed_vector(canonical: str, text: str, width: int, dimensions: int = 0) -> tuple[float, ...]:
    """The unit-length float32 embedding of ``text``; truncated and renormalised like Ollama."""
    raw = hashlib.shake_256(f"{canonical}\0embed\0{text}".encode()).digest(2 * width)
    values = [v - 32767.5 for v in struct.unpack(f"<{width}H", raw)]
    values = _normalised(values)
    if 0 < dimensions < width:
        values = _normalised(values[:dimensions])
    return tuple(array("f", values).tolist())


def _normalised(values: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


@lru_cache(maxsize=8)
def _registry(extra_models: str) -> Registry:
    return Registry.from_env({"SIM_EXTRA_MODELS": extra_models})


def _resolve(model: str) -> tuple[str, int | None]:
    """Canonical weights name and embedding width (``None`` for chat models) of ``model``."""
    name = ModelName.parse(model)
    if name is None:
        raise ValueError(f"invalid model name: {model!r}")
    spec = _registry(os.environ.get("SIM_EXTRA_MODELS", "")).lookup(name)
    if spec is None:
        return name.display, None
    return spec.canonical, spec.embedding_length if spec.kind is ModelKind.EMBEDDING else None


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
    """Native width of an embedding model's vectors (384 for ``all-minilm``).

    Raises:
        LookupError: ``model`` is not a known embedding model.
    """
    width = _resolve(model)[1]
    if width is None:
        raise LookupError(f"{model!r} is not a known embedding model")
    return width


def expected_embedding(model: str, text: str, dimensions: int | None = None) -> list[float]:
    """The unit float32 vector the simulator returns for ``text`` (exact, JSON or base64)."""
    canonical, width = _resolve(model)
    if width is None:
        raise LookupError(f"{model!r} is not a known embedding model")
    return list(embed_vector(canonical, text, width, dimensions or 0))
