"""The served models: parse, normalise, alias, resolve.

One place knows which models an instance serves and what kind each is. Every name a client sends
(``smollm2``, ``smollm2:latest``, ``registry.ollama.ai/library/smollm2``, an alias, or the UbiOps
OpenAI-endpoint form ``ubiops-deployment/<deployment>/<version>/<model>``) resolves here to the
Ollama tag to forward, or fails with :class:`UnknownModelError` listing what is available.

The operator's names (each model as configured, then each alias) are the ones listed and quoted
in errors. UbiOps' ``openai-model-names`` label carries their *label names* instead
(:func:`label_name`: lowercase letters, digits, ``-``, ``_``, ``.``, at most 63 characters, the
strictest plausible rule, since UbiOps documents none and its label filters use ``key:value``),
and every label name is also registered as a name that resolves, so
``ubiops-deployment/<deployment>/<version>/all-minilm-l6-v2`` reaches ``all-minilm:l6-v2``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "LABEL_NAME_MAX",
    "LABEL_RULE",
    "UBIOPS_MODEL_PREFIX",
    "Catalog",
    "CatalogError",
    "Model",
    "ModelKind",
    "UnknownModelError",
    "is_cloud",
    "label_name",
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
_LABEL_UNSAFE = re.compile(r"[^a-z0-9._-]")
_LABEL_EDGES = "-_."
LABEL_NAME_MAX = 63
"""The longest name the ``openai-model-names`` label carries (a Kubernetes label value's limit)."""
LABEL_RULE = (
    f"lowercase letters, digits, '-', '_' and '.', at most {LABEL_NAME_MAX} characters, "
    "starting and ending with a letter or digit"
)


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
        what = (
            "is an ollama.com cloud model, which this deployment does not serve (it runs "
            "models locally)"
            if is_cloud(strip_ubiops_prefix(requested))
            else "is not served by this deployment"
        )
        super().__init__(f"model {requested!r} {what}; available models: {listing}")


@dataclass(frozen=True, slots=True)
class Model:
    """One served model: its Ollama tag (what is forwarded) and its kind."""

    tag: str
    kind: ModelKind
    configured_as: str

    @property
    def is_embedding(self) -> bool:
        return self.kind is ModelKind.EMBEDDING


def is_cloud(name: str) -> bool:
    """Whether ``name`` names an ollama.com cloud model (tag ``cloud`` or ``<tag>-cloud``).

    Ollama forwards such models to ollama.com under the signed-in account; this project serves
    local models only. The rule is Ollama's own (``internal/modelref``).
    """
    _, sep, tag = name.strip().rpartition(":")
    tag = tag.strip().lower()
    return bool(sep) and "/" not in tag and (tag == "cloud" or tag.endswith("-cloud"))


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
    """The configured models and aliases, keyed by normalised name, plus their label names."""

    models: tuple[Model, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()
    _by_name: dict[str, Model] = field(default_factory=dict, repr=False, compare=False)
    _labels: list[tuple[str, Model]] = field(default_factory=list, repr=False, compare=False)
    _label_problems: dict[str, list[str]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for model in self.models:
            self._by_name[name_key(model.tag)] = model
        for alias, target in self.aliases:
            self._by_name[name_key(alias)] = self._by_name[name_key(target)]
        self._add_label_names()

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
        """The operator's names: each model as configured, then each alias.

        What model listings show and errors quote; :meth:`resolve` accepts more (any spelling of
        these, and the label names).
        """
        return tuple(name for name, _ in self.listing())

    def listing(self) -> tuple[tuple[str, Model], ...]:
        """Each of :attr:`names` with the model it names, in that order."""
        by_tag = {model.tag: model for model in self.models}
        return (
            *((model.configured_as, model) for model in self.models),
            *((alias, by_tag[target]) for alias, target in self.aliases),
        )

    def resolve(self, requested: str) -> Model:
        """Return the model a client means by ``requested``.

        Raises:
            UnknownModelError: no configured model, alias or label name matches; lists the
                available names.
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

    def names_of(self, model: Model) -> tuple[str, ...]:
        """Every name ``model`` is known by here: its tag, its configured name, its aliases."""
        return (model.tag, model.configured_as, *self.aliases_of(model))

    def label_names(self) -> tuple[tuple[str, Model], ...]:
        """Every label name with the model it resolves to, in :attr:`names` order, each once.

        A model's label names are the :func:`label_name` forms of its configured name and of its
        aliases that are valid and unambiguous: a form that is another model's name, or the form
        of two models' names, names neither of them (and does not resolve as a label name).
        """
        return tuple(self._labels)

    def label_name_of(self, model: Model) -> str | None:
        """The first label name of ``model``, or None when it has none."""
        return next((label for label, owner in self._labels if owner == model), None)

    def openai_model_names(self) -> str:
        """The UbiOps ``openai-model-names`` label value: every label name, ``;`` between them.

        Raises:
            CatalogError: a model has no label name (its names are too long, or their label forms
                also name another model); the problem says which and what to do.
        """
        for model in self.models:
            if self.label_name_of(model) is None:
                variable = "OLLAMA_EMBEDDING_MODELS" if model.is_embedding else "OLLAMA_CHAT_MODELS"
                reasons = "; ".join(self._label_problems.get(model.tag, ()))
                raise CatalogError(
                    variable,
                    f"model {model.configured_as!r} has no name usable in UbiOps' "
                    f"openai-model-names label ({reasons}); give it an alias made of "
                    f"{LABEL_RULE}",
                )
        return _LABEL_SEPARATOR.join(label for label, _ in self._labels)

    def _add_label_names(self) -> None:
        """Work out :meth:`label_names`; register each as a name that resolves."""
        claims: dict[str, list[Model]] = {}
        for name, model in self.listing():
            label = label_name(name)
            if not label:
                self._note(model, f"{name!r} has no letter or digit")
            elif len(label) > LABEL_NAME_MAX:
                self._note(model, f"{label!r} is longer than {LABEL_NAME_MAX} characters")
            elif model not in claims.setdefault(label, []):
                claims[label].append(model)
        for label, claimants in claims.items():
            key = name_key(label)
            owner = self._by_name.get(key)
            if owner is None and len(claimants) == 1:
                owner = self._by_name[key] = claimants[0]
            for model in claimants:
                if owner is None:
                    others = ", ".join(repr(m.configured_as) for m in claimants if m is not model)
                    self._note(model, f"{label!r} would also name {others}")
                elif owner is not model:
                    self._note(model, f"{label!r} is the name of {owner.configured_as!r}")
            if owner is not None and owner in claimants:
                self._labels.append((label, owner))

    def _note(self, model: Model, problem: str) -> None:
        self._label_problems.setdefault(model.tag, []).append(problem)


def label_name(name: str) -> str:
    """The label-safe form of a model name: lowercase, every character but letters, digits,
    ``-``, ``_`` and ``.`` turned into ``-``, and no ``-``, ``_`` or ``.`` at either end.

    ``all-minilm:l6-v2`` becomes ``all-minilm-l6-v2`` (the name UbiOps' tutorial labels it with),
    ``hf.co/Org/Model:Q4_K_M`` becomes ``hf.co-org-model-q4_k_m``. The result may be empty or
    longer than :data:`LABEL_NAME_MAX`; :class:`Catalog` checks.
    """
    return _LABEL_UNSAFE.sub("-", name.strip().lower()).strip(_LABEL_EDGES)


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
    if is_cloud(name):
        raise CatalogError(
            variable,
            f"{name!r} is an ollama.com cloud model: it runs on ollama.com under an account, "
            "not in this deployment; list local models only",
        )
