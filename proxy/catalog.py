"""The served models: parse, normalise, alias, resolve.

One place knows which models an instance serves and what kind each is. Every name a client sends
(``smollm2``, ``smollm2:latest``, ``registry.ollama.ai/library/smollm2``, an alias, or the UbiOps
OpenAI-endpoint form ``ubiops-deployment/<deployment>/<version>/<model>``) resolves here to the
Ollama tag to forward, or fails with :class:`UnknownModelError` listing what is available.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "UBIOPS_MODEL_PREFIX",
    "Catalog",
    "CatalogError",
    "Model",
    "ModelKind",
    "UnknownModelError",
    "name_key",
    "normalise",
    "strip_ubiops_prefix",
]

UBIOPS_MODEL_PREFIX = "ubiops-deployment/"
_DEFAULT_REGISTRY = "registry.ollama.ai"
_DEFAULT_NAMESPACE = "library"
_DEFAULT_TAG = "latest"
_ALIAS_ITEM_SEPARATOR = ";"
_LABEL_SEPARATOR = ";"


class ModelKind(enum.StrEnum):
    """What a model is served for."""

    CHAT = "chat"
    EMBEDDING = "embedding"


class CatalogError(ValueError):
    """The model lists or aliases are inconsistent; ``variable`` names the culprit."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class UnknownModelError(LookupError):
    """A requested model is not served by this deployment."""

    def __init__(self, requested: str, available: Iterable[str]) -> None:
        self.requested = requested
        self.available = tuple(available)
        listing = ", ".join(self.available) or "none are configured"
        super().__init__(
            f"model {requested!r} is not served by this deployment; available models: {listing}"
        )


@dataclass(frozen=True, slots=True)
class Model:
    """One served model: its Ollama tag (what is forwarded) and its kind."""

    tag: str
    kind: ModelKind
    configured_as: str

    @property
    def is_embedding(self) -> bool:
        return self.kind is ModelKind.EMBEDDING


def name_key(name: str) -> str:
    """The lookup key of a model name: normalised and case-folded, as Ollama compares names."""
    return normalise(name).casefold()


def normalise(name: str) -> str:
    """Return Ollama's canonical form of a model name: ``[host/][namespace/]model:tag``.

    The default registry and ``library`` namespace are dropped and a missing tag becomes
    ``latest``, so ``smollm2``, ``smollm2:latest`` and ``registry.ollama.ai/library/smollm2``
    are one model. Case is kept (registries such as hf.co are case-sensitive); compare names
    with :func:`name_key`.
    """
    text, _, _digest = name.strip().partition("@")
    path, _, last = text.rpartition("/")
    model, sep, tag = last.partition(":")
    if not sep or not tag:
        tag = _DEFAULT_TAG
    parts = [p for p in path.split("/") if p] if path else []
    if parts and parts[0].lower() == _DEFAULT_REGISTRY:
        parts = parts[1:]
    if [p.lower() for p in parts] == [_DEFAULT_NAMESPACE]:
        parts = []
    return "/".join([*parts, f"{model}:{tag}"])


@dataclass(frozen=True)
class Catalog:
    """The configured models and aliases, keyed by normalised name."""

    models: tuple[Model, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()
    _by_name: dict[str, Model] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for model in self.models:
            self._by_name[name_key(model.tag)] = model
        for alias, target in self.aliases:
            self._by_name[name_key(alias)] = self._by_name[name_key(target)]

    @classmethod
    def parse(cls, chat_models: str, embedding_models: str, aliases: str = "") -> Catalog:
        """Build a catalog from the texts of the two model lists and MODEL_ALIASES.

        Raises:
            CatalogError: a model listed as both kinds, an empty or malformed model name, or an
                alias that is malformed, collides with a model, or points at no configured model.
        """
        models: dict[str, Model] = {}
        for variable, text, kind in (
            ("OLLAMA_CHAT_MODELS", chat_models, ModelKind.CHAT),
            ("OLLAMA_EMBEDDING_MODELS", embedding_models, ModelKind.EMBEDDING),
        ):
            for item in _split(text, ","):
                _check_name(variable, item)
                key = name_key(item)
                known = models.get(key)
                if known is not None and known.kind is not kind:
                    raise CatalogError(
                        variable, f"{item!r} is already listed as a {known.kind} model"
                    )
                if known is None:
                    models[key] = Model(tag=normalise(item), kind=kind, configured_as=item)
        alias_pairs: list[tuple[str, str]] = []
        seen_aliases: set[str] = set()
        for item in _split(aliases, _ALIAS_ITEM_SEPARATOR):
            alias, sep, target = (part.strip() for part in item.partition("="))
            if not sep or not alias or not target:
                raise CatalogError("MODEL_ALIASES", f"{item!r} is not of the form alias=model")
            _check_name("MODEL_ALIASES", alias)
            alias_key, target_key = name_key(alias), name_key(target)
            if alias_key in models:
                raise CatalogError("MODEL_ALIASES", f"alias {alias!r} is already a model name")
            if alias_key in seen_aliases:
                raise CatalogError("MODEL_ALIASES", f"alias {alias!r} is defined twice")
            if target_key not in models:
                raise CatalogError(
                    "MODEL_ALIASES",
                    f"alias {alias!r} points at {target!r}, which is in neither "
                    "OLLAMA_CHAT_MODELS nor OLLAMA_EMBEDDING_MODELS",
                )
            seen_aliases.add(alias_key)
            alias_pairs.append((alias, models[target_key].tag))
        return cls(models=tuple(models.values()), aliases=tuple(alias_pairs))

    def __iter__(self) -> Iterator[Model]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a client may use: each model's configured name, then each alias."""
        return (*(m.configured_as for m in self.models), *(alias for alias, _ in self.aliases))

    def resolve(self, requested: str) -> Model:
        """Return the model a client means by ``requested``.

        Raises:
            UnknownModelError: no configured model or alias matches; lists the available names.
        """
        name = strip_ubiops_prefix(requested)
        model = self._by_name.get(name_key(name)) if name.strip() else None
        if model is None:
            raise UnknownModelError(requested, self.names)
        return model

    def names_of_kind(self, kind: ModelKind) -> tuple[str, ...]:
        """The configured names of the models of ``kind``."""
        return tuple(m.configured_as for m in self.models if m.kind is kind)

    def aliases_of(self, model: Model) -> tuple[str, ...]:
        """The aliases that point at ``model``."""
        return tuple(alias for alias, target in self.aliases if target == model.tag)

    def openai_model_names(self) -> str:
        """The UbiOps ``openai-model-names`` label value: every name :meth:`resolve` accepts."""
        return _LABEL_SEPARATOR.join(self.names)


def strip_ubiops_prefix(name: str) -> str:
    """Turn ``ubiops-deployment/<deployment>/<version>/<model>`` into ``<model>``.

    The version may be empty (the default version); the model may itself contain slashes
    (``hf.co/org/model:tag``). Any other name is returned unchanged.
    """
    if not name.startswith(UBIOPS_MODEL_PREFIX):
        return name
    parts = name[len(UBIOPS_MODEL_PREFIX) :].split("/", 2)
    if len(parts) != 3 or not parts[0]:
        return name
    return parts[2]


def _split(text: str, separator: str) -> Iterator[str]:
    return (item.strip() for item in text.split(separator) if item.strip())


def _check_name(variable: str, name: str) -> None:
    if any(ch.isspace() for ch in name) or name.startswith(("/", ":")) or name.endswith("/"):
        raise CatalogError(variable, f"{name!r} is not a valid Ollama model name")
    if name.startswith(UBIOPS_MODEL_PREFIX):
        raise CatalogError(
            variable, f"{name!r}: list the Ollama name, not the UbiOps endpoint name"
        )
