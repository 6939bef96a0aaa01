"""Ollama model names: ``[host/][namespace/]model[:tag]``, defaults filled in like Ollama does."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_HOST", "DEFAULT_NAMESPACE", "DEFAULT_TAG", "ModelName", "normalise"]

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(:[0-9]+)?$")
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")


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
        slash = text.rfind("/")
        colon = text.rfind(":")
        tag = DEFAULT_TAG
        if colon > slash:
            text, tag = text[:colon], text[colon + 1 :]
        parts = text.split("/")
        if len(parts) > 3:
            return None
        model = parts[-1]
        namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
        host = parts[-3] if len(parts) == 3 else DEFAULT_HOST
        if not (_HOST.match(host) and _PART.match(namespace) and _PART.match(model)):
            return None
        if not _PART.match(tag):
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
        if self.host != DEFAULT_HOST:
            return self.full
        if self.namespace != DEFAULT_NAMESPACE:
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
