"""What the simulated registry can pull: realistic small models, plus ``SIM_EXTRA_MODELS``.

``SIM_EXTRA_MODELS`` is a comma-separated list of ``name[:tag]=kind`` items, where kind is
``chat`` or ``embedding`` (optionally ``embedding:<dimension>``, default 384), for example
``SIM_EXTRA_MODELS="tinychat:1m=chat,myorg/emb:v2=embedding:768"``.

Sizes and digests are deterministic functions of the model's canonical name, so two tags of the
same weights (``smollm2:latest`` and ``smollm2:1.7b``) share digests, as on the real registry.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .names import ModelName

__all__ = [
    "MEDIA_CONFIG",
    "Layer",
    "ModelKind",
    "ModelSpec",
    "Registry",
    "parse_extra_models",
]

MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"
_MEDIA_MODEL = "application/vnd.ollama.image.model"
_MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
_MEDIA_LICENSE = "application/vnd.ollama.image.license"
_MEDIA_PARAMS = "application/vnd.ollama.image.params"

_CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
_LLAMA3 = (
    "<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>"
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
    "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
_CHATML_STOP = (("stop", "<|im_start|>"), ("stop", "<|im_end|>"))
_LLAMA3_STOP = (
    ("stop", "<|start_header_id|>"),
    ("stop", "<|end_header_id|>"),
    ("stop", "<|eot_id|>"),
)


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
    """Everything the simulator knows about one set of weights."""

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
    canonical: str,
    family: str,
    params: tuple[str, int],
    quant: str,
    size: int,
    ctx: int,
    width: int,
) -> ModelSpec:
    template, stop = (
        (_LLAMA3, _LLAMA3_STOP) if canonical.startswith("llama") else (_CHATML, _CHATML_STOP)
    )
    return ModelSpec(
        canonical,
        ModelKind.CHAT,
        family,
        params[0],
        params[1],
        quant,
        size,
        ctx,
        width,
        template,
        stop,
    )


def _embedding(
    canonical: str, family: str, params: tuple[str, int], size: int, ctx: int, dim: int
) -> ModelSpec:
    return ModelSpec(
        canonical, ModelKind.EMBEDDING, family, params[0], params[1], "F16", size, ctx, dim
    )


_SMOLLM2_1_7B = _chat(
    "smollm2:1.7b", "llama", ("1.7B", 1_711_376_384), "Q8_0", 1_820_414_944, 8192, 2048
)
_SMOLLM_1_7B = _chat(
    "smollm:1.7b", "llama", ("1.7B", 1_711_376_384), "Q4_0", 990_650_467, 2048, 2048
)
_LLAMA32_3B = _chat(
    "llama3.2:3b", "llama", ("3.2B", 3_212_749_888), "Q4_K_M", 2_019_393_189, 131072, 3072
)
_QWEN25_7B = _chat(
    "qwen2.5:7b", "qwen2", ("7.6B", 7_615_616_512), "Q4_K_M", 4_683_073_184, 32768, 3584
)
_MINILM_22M = _embedding("all-minilm:l6-v2", "bert", ("23M", 22_565_376), 45_949_216, 512, 384)
_MINILM_33M = _embedding("all-minilm:33m", "bert", ("33M", 33_212_160), 67_236_864, 512, 384)
_NOMIC = _embedding(
    "nomic-embed-text:v1.5", "nomic-bert", ("137M", 136_731_648), 274_290_656, 2048, 768
)
_MXBAI = _embedding("mxbai-embed-large:335m", "bert", ("334M", 334_094_336), 669_603_712, 512, 1024)

_BUILTIN: dict[str, ModelSpec] = {
    "smollm2:135m": _chat(
        "smollm2:135m", "llama", ("135M", 134_515_008), "Q8_0", 270_898_784, 8192, 576
    ),
    "smollm2:360m": _chat(
        "smollm2:360m", "llama", ("362M", 361_821_120), "F16", 725_566_816, 8192, 960
    ),
    "smollm2:1.7b": _SMOLLM2_1_7B,
    "smollm2:latest": _SMOLLM2_1_7B,
    "smollm:135m": _chat(
        "smollm:135m", "llama", ("135M", 134_515_008), "Q4_0", 91_739_413, 2048, 576
    ),
    "smollm:360m": _chat(
        "smollm:360m", "llama", ("362M", 361_821_120), "Q4_0", 229_153_605, 2048, 960
    ),
    "smollm:1.7b": _SMOLLM_1_7B,
    "smollm:latest": _SMOLLM_1_7B,
    "llama3.2:1b": _chat(
        "llama3.2:1b", "llama", ("1.2B", 1_235_814_432), "Q8_0", 1_321_082_688, 131072, 2048
    ),
    "llama3.2:3b": _LLAMA32_3B,
    "llama3.2:latest": _LLAMA32_3B,
    "qwen2.5:0.5b": _chat(
        "qwen2.5:0.5b", "qwen2", ("494.03M", 494_032_768), "Q4_K_M", 397_807_936, 32768, 896
    ),
    "qwen2.5:7b": _QWEN25_7B,
    "qwen2.5:latest": _QWEN25_7B,
    "all-minilm:l6-v2": _MINILM_22M,
    "all-minilm:22m": _MINILM_22M,
    "all-minilm:latest": _MINILM_22M,
    "all-minilm:33m": _MINILM_33M,
    "all-minilm:l12-v2": _MINILM_33M,
    "nomic-embed-text:v1.5": _NOMIC,
    "nomic-embed-text:latest": _NOMIC,
    "mxbai-embed-large:335m": _MXBAI,
    "mxbai-embed-large:v1": _MXBAI,
    "mxbai-embed-large:latest": _MXBAI,
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
            spec = _chat(name.display, "llama", ("100M", 100_000_000), "Q4_0", size, 4096, 768)
        else:
            dim = int(dim_text) if dim_text else 384
            if dim <= 0:
                raise ValueError(f"SIM_EXTRA_MODELS: bad dimension in {item!r}")
            spec = _embedding(name.display, "bert", ("33M", 33_000_000), size, 512, dim)
        out[name.display] = spec
    return out


class Registry:
    """The pullable models, looked up by any spelling of their name."""

    def __init__(self, entries: Mapping[str, ModelSpec]) -> None:
        self._entries: dict[str, ModelSpec] = {}
        for raw, spec in entries.items():
            name = ModelName.parse(raw)
            if name is None:
                raise ValueError(f"invalid registry name {raw!r}")
            self._entries[name.key] = spec

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Registry:
        """Built-in table plus ``SIM_EXTRA_MODELS``."""
        return cls({**_BUILTIN, **parse_extra_models(environ.get("SIM_EXTRA_MODELS", ""))})

    def lookup(self, name: ModelName) -> ModelSpec | None:
        """The spec pullable under ``name``, if any."""
        return self._entries.get(name.key)
