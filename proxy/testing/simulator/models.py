"""Models: their names, what the simulated registry can pull, and what their weights output.

Names are ``[host/][namespace/]model[:tag]`` with Ollama's defaults filled in. The registry holds
a few realistic small models plus ``SIM_EXTRA_MODELS``, a comma-separated list of
``name[:tag]=kind`` items, where kind is ``chat`` or ``embedding`` (optionally
``embedding:<dimension>``, default 384), for example
``SIM_EXTRA_MODELS="tinychat:1m=chat,myorg/emb:v2=embedding:768"``. Sizes and digests are
deterministic functions of the model's canonical name, so two tags of the same weights
(``smollm2:latest`` and ``smollm2:1.7b``) share digests, as on the real registry.

Output is deterministic: it depends only on the weights (the canonical name, so ``smollm2``,
``smollm2:latest`` and ``smollm2:1.7b`` agree) and the input, a generate ``prompt`` string or a
chat ``messages`` list (only each message's ``role`` and text ``content`` matter; OpenAI content
parts are flattened the way Ollama does).
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
import struct
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "Layer",
    "ModelKind",
    "ModelName",
    "ModelSpec",
    "Prompt",
    "Registry",
    "embed_vector",
    "generate_tokens",
    "normalise",
    "parse_extra_models",
    "prompt_token_count",
    "text_token_count",
]

_DEFAULT_HOST = "registry.ollama.ai"
_DEFAULT_NAMESPACE = "library"
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(:[0-9]+)?$")
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")

_MEDIA_MODEL = "application/vnd.ollama.image.model"
_MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
_MEDIA_LICENSE = "application/vnd.ollama.image.license"
_MEDIA_PARAMS = "application/vnd.ollama.image.params"
_CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
_CHATML_STOP = (("stop", "<|im_start|>"), ("stop", "<|im_end|>"))


@dataclass(frozen=True, slots=True)
class ModelName:
    """A fully qualified model name."""

    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, raw: str) -> ModelName | None:
        """Parse ``raw`` with Ollama's defaults; ``None`` when it is not a valid name."""
        text = raw.strip().split("@", 1)[0]
        slash, colon = text.rfind("/"), text.rfind(":")
        tag = "latest"
        if colon > slash:
            text, tag = text[:colon], text[colon + 1 :]
        parts = text.split("/")
        if len(parts) > 3:
            return None
        model = parts[-1]
        namespace = parts[-2] if len(parts) >= 2 else _DEFAULT_NAMESPACE
        host = parts[-3] if len(parts) == 3 else _DEFAULT_HOST
        if not (_HOST.match(host) and all(_PART.match(p) for p in (namespace, model, tag))):
            return None
        return cls(host, namespace, model, tag)

    @property
    def full(self) -> str:
        """``host/namespace/model:tag``."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def key(self) -> str:
        """Case-insensitive identity, as Ollama matches names."""
        return self.full.lower()

    @property
    def display(self) -> str:
        """The shortest form Ollama reports: ``smollm2:latest``, ``ns/model:tag``, or full."""
        if self.host != _DEFAULT_HOST:
            return self.full
        if self.namespace != _DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def manifest_path(self, root: Path) -> Path:
        """Where Ollama keeps this model's manifest under ``OLLAMA_MODELS``."""
        return root / "manifests" / self.host / self.namespace / self.model / self.tag


def normalise(name: str) -> str:
    """Return the display form of ``name`` (``smollm2`` → ``smollm2:latest``).

    Raises:
        ValueError: ``name`` is not a valid Ollama model name.
    """
    parsed = ModelName.parse(name)
    if parsed is None:
        raise ValueError(f"invalid model name: {name!r}")
    return parsed.display


class ModelKind(enum.StrEnum):
    """What a model serves."""

    CHAT = "chat"
    EMBEDDING = "embedding"


@dataclass(frozen=True, slots=True)
class Layer:
    """One manifest layer; ``content`` is ``None`` for the (unwritten) weights."""

    media_type: str
    digest: str
    size: int
    content: bytes | None


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything the simulator knows about one set of weights (field order is stored)."""

    canonical: str
    kind: ModelKind
    family: str
    parameter_size: str
    parameter_count: int
    quantization: str
    weights_size: int
    context_length: int
    embedding_length: int
    template: str = ""
    parameters: tuple[tuple[str, str], ...] = ()
    license: str = "Apache License 2.0"

    @property
    def capabilities(self) -> list[str]:
        """Ollama's capability list for this model."""
        return ["completion"] if self.kind is ModelKind.CHAT else ["embedding"]

    def details(self) -> dict[str, Any]:
        """Ollama's ``ModelDetails`` object."""
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization,
        }

    @property
    def file_type(self) -> int:
        """GGUF ``general.file_type`` code for the quantization."""
        return {"F16": 1, "Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15}.get(self.quantization, 0)

    def layers(self) -> tuple[Layer, ...]:
        """Manifest layers, weights first, with deterministic digests."""
        weights = hashlib.sha256(f"ollama-sim weights {self.canonical}".encode()).hexdigest()
        out = [Layer(_MEDIA_MODEL, f"sha256:{weights}", self.weights_size, None)]
        if self.template:
            out.append(_content_layer(_MEDIA_TEMPLATE, self.template.encode()))
        out.append(_content_layer(_MEDIA_LICENSE, self.license.encode()))
        if self.parameters:
            params: dict[str, list[str]] = {}
            for key, value in self.parameters:
                params.setdefault(key, []).append(value)
            out.append(_content_layer(_MEDIA_PARAMS, json.dumps(params).encode()))
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        """Serialisable form, stored in the model's config blob."""
        data = asdict(self)
        data["kind"] = self.kind.value
        data["parameters"] = [list(item) for item in self.parameters]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_json`."""
        fields = dict(data)
        fields["kind"] = ModelKind(fields["kind"])
        fields["parameters"] = tuple((str(k), str(v)) for k, v in fields.get("parameters", ()))
        return cls(**fields)


def _content_layer(media_type: str, content: bytes) -> Layer:
    return Layer(media_type, f"sha256:{hashlib.sha256(content).hexdigest()}", len(content), content)


def _chat(
    canonical: str, size_text: str, count: int, quant: str, size: int, ctx: int, width: int
) -> ModelSpec:
    return ModelSpec(
        canonical,
        ModelKind.CHAT,
        "llama",
        size_text,
        count,
        quant,
        size,
        ctx,
        width,
        _CHATML,
        _CHATML_STOP,
    )


def _embedding(
    canonical: str, family: str, size_text: str, count: int, size: int, ctx: int, dim: int
) -> ModelSpec:
    return ModelSpec(
        canonical, ModelKind.EMBEDDING, family, size_text, count, "F16", size, ctx, dim
    )


_BUILTIN = (
    _chat("smollm2:135m", "135M", 134_515_008, "Q8_0", 270_898_784, 8192, 576),
    _chat("smollm2:360m", "362M", 361_821_120, "F16", 725_566_816, 8192, 960),
    _chat("smollm2:1.7b", "1.7B", 1_711_376_384, "Q8_0", 1_820_414_944, 8192, 2048),
    _chat("smollm:135m", "135M", 134_515_008, "Q4_0", 91_739_413, 2048, 576),
    _chat("smollm:360m", "362M", 361_821_120, "Q4_0", 229_153_605, 2048, 960),
    _chat("smollm:1.7b", "1.7B", 1_711_376_384, "Q4_0", 990_650_467, 2048, 2048),
    _embedding("all-minilm:l6-v2", "bert", "23M", 22_565_376, 45_949_216, 512, 384),
    _embedding("all-minilm:33m", "bert", "33M", 33_212_160, 67_236_864, 512, 384),
    _embedding("nomic-embed-text:v1.5", "nomic-bert", "137M", 136_731_648, 274_290_656, 2048, 768),
)
_ALIASES = {  # other tags of the same weights
    "smollm2:latest": "smollm2:1.7b",
    "smollm:latest": "smollm:1.7b",
    "all-minilm:22m": "all-minilm:l6-v2",
    "all-minilm:latest": "all-minilm:l6-v2",
    "all-minilm:l12-v2": "all-minilm:33m",
    "nomic-embed-text:latest": "nomic-embed-text:v1.5",
}


def parse_extra_models(text: str) -> dict[str, ModelSpec]:
    """Parse ``SIM_EXTRA_MODELS``; keys are display names (``name:tag``).

    Raises:
        ValueError: an item is malformed.
    """
    out: dict[str, ModelSpec] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        raw_name, sep, raw_kind = item.partition("=")
        name = ModelName.parse(raw_name)
        kind_text, _, dim_text = raw_kind.strip().partition(":")
        if not sep or name is None or kind_text not in {"chat", "embedding"}:
            raise ValueError(
                f"SIM_EXTRA_MODELS: bad item {item!r} (want name:tag=chat|embedding[:dim])"
            )
        size = 20_000_000 + int(hashlib.sha256(name.key.encode()).hexdigest()[:8], 16) % 200_000_000
        if kind_text == "chat":
            spec = _chat(name.display, "100M", 100_000_000, "Q4_0", size, 4096, 768)
        else:
            dim = int(dim_text) if dim_text else 384
            if dim <= 0:
                raise ValueError(f"SIM_EXTRA_MODELS: bad dimension in {item!r}")
            spec = _embedding(name.display, "bert", "33M", 33_000_000, size, 512, dim)
        out[name.display] = spec
    return out


class Registry:
    """The pullable models (built-in plus ``SIM_EXTRA_MODELS``), by any spelling of their name."""

    def __init__(self, extra_models: str = "") -> None:
        entries = {spec.canonical: spec for spec in _BUILTIN}
        entries.update({alias: entries[target] for alias, target in _ALIASES.items()})
        entries.update(parse_extra_models(extra_models))
        self._entries: dict[str, ModelSpec] = {}
        for raw, spec in entries.items():
            name = ModelName.parse(raw)
            if name is None:
                raise ValueError(f"invalid registry name {raw!r}")
            self._entries[name.key] = spec

    def lookup(self, name: ModelName) -> ModelSpec | None:
        """The spec pullable under ``name``, if any."""
        return self._entries.get(name.key)


Prompt = str | Sequence[Mapping[str, Any]]
"""A generate ``prompt`` string or a chat ``messages`` list."""

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


def _flatten_messages(messages: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
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


def generate_tokens(canonical: str, prompt: Prompt, count: int) -> list[str]:
    """The first ``count`` tokens the weights named ``canonical`` produce for ``prompt``."""
    if isinstance(prompt, str):
        body = "generate\0" + prompt
    else:
        body = "chat\0" + json.dumps(_flatten_messages(prompt), ensure_ascii=False)
    picks = hashlib.shake_256(f"{canonical}\0{body}".encode()).digest(count)
    return [_WORDS[b].capitalize() if i == 0 else " " + _WORDS[b] for i, b in enumerate(picks)]


def text_token_count(text: str) -> int:
    """Tokens the simulator counts for one text: its whitespace-separated words, at least 1."""
    return max(1, len(text.split()))


def prompt_token_count(prompt: Prompt) -> int:
    """``prompt_eval_count`` for a prompt: its word count, or per chat message words + 4."""
    if isinstance(prompt, str):
        return text_token_count(prompt)
    return sum(len(text.split()) + 4 for _, text in _flatten_messages(prompt))


@lru_cache(maxsize=4096)
def embed_vector(canonical: str, text: str, width: int, dimensions: int = 0) -> tuple[float, ...]:
    """The unit-length float32 embedding of ``text``; truncated and renormalised like Ollama."""
    raw = hashlib.shake_256(f"{canonical}\0embed\0{text}".encode()).digest(2 * width)
    values = _normalised([v - 32767.5 for v in struct.unpack(f"<{width}H", raw)])
    if 0 < dimensions < width:
        values = _normalised(values[:dimensions])
    return tuple(array("f", values).tolist())


def _normalised(values: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]
