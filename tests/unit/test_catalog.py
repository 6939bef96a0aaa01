from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.catalog import Catalog, CatalogError, ModelKind, UnknownModelError, normalise

TUTORIAL_CHAT = "smollm2,smollm"
TUTORIAL_EMBEDDING = "all-minilm:l6-v2,nomic-embed-text"


@pytest.fixture
def catalog() -> Catalog:
    return Catalog.parse(TUTORIAL_CHAT, TUTORIAL_EMBEDDING, "all-minilm-l6-v2=all-minilm:l6-v2")


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("smollm2", "smollm2:latest"),
        ("smollm2:latest", "smollm2:latest"),
        ("  smollm2:135m ", "smollm2:135m"),
        ("library/smollm2", "smollm2:latest"),
        ("registry.ollama.ai/library/smollm2:1.7b", "smollm2:1.7b"),
        ("hf.co/Org/Repo-GGUF:Q4_K_M", "hf.co/Org/Repo-GGUF:Q4_K_M"),
        ("myhost:5000/team/model", "myhost:5000/team/model:latest"),
        ("smollm2@sha256:abc", "smollm2:latest"),
    ],
)
def test_normalise_matches_ollama_naming(name: str, canonical: str) -> None:
    assert normalise(name) == canonical


@given(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}(:[a-z0-9._-]{1,10})?", fullmatch=True))
def test_normalise_is_idempotent(name: str) -> None:
    assert normalise(normalise(name)) == normalise(name)


def test_parse_ignores_whitespace_empty_items_and_duplicates() -> None:
    catalog = Catalog.parse(" smollm2 , ,smollm2:latest,SMOLLM2,", "")
    assert [m.tag for m in catalog] == ["smollm2:latest"]
    assert catalog.names == ("smollm2",)


@pytest.mark.parametrize(
    "requested",
    [
        "smollm2",
        "smollm2:latest",
        "SmolLM2",
        "registry.ollama.ai/library/smollm2:latest",
        "ubiops-deployment/ollama-multi-model-server/v1/smollm2",
        "ubiops-deployment/ollama-multi-model-server//smollm2:latest",
    ],
)
def test_resolve_accepts_every_spelling_of_a_model(catalog: Catalog, requested: str) -> None:
    model = catalog.resolve(requested)
    assert model.tag == "smollm2:latest"
    assert model.kind is ModelKind.CHAT


def test_resolve_applies_aliases_and_knows_kinds(catalog: Catalog) -> None:
    model = catalog.resolve("ubiops-deployment/dep/v1/all-minilm-l6-v2")
    assert model.tag == "all-minilm:l6-v2"
    assert model.is_embedding
    assert catalog.aliases_of(model) == ("all-minilm-l6-v2",)


@pytest.mark.parametrize(
    "requested", ["llama3", "../x", "a/b/c/d/e", "", "   ", "ubiops-deployment/"]
)
def test_unknown_model_lists_what_is_available(catalog: Catalog, requested: str) -> None:
    with pytest.raises(UnknownModelError) as caught:
        catalog.resolve(requested)
    message = str(caught.value)
    for name in ("smollm2", "smollm", "all-minilm:l6-v2", "nomic-embed-text", "all-minilm-l6-v2"):
        assert name in message


def test_label_value_names_only_resolvable_models(catalog: Catalog) -> None:
    label = catalog.openai_model_names()
    assert label == "smollm2;smollm;all-minilm:l6-v2;nomic-embed-text;all-minilm-l6-v2"
    for name in label.split(";"):
        assert catalog.resolve(f"ubiops-deployment/d/v/{name}").tag


@pytest.mark.parametrize(
    ("chat", "embedding", "aliases", "variable", "fragment"),
    [
        ("smollm2", "smollm2:latest", "", "OLLAMA_EMBEDDING_MODELS", "already listed as a chat"),
        ("bad name", "", "", "OLLAMA_CHAT_MODELS", "not a valid"),
        ("ubiops-deployment/d/v/m", "", "", "OLLAMA_CHAT_MODELS", "not the UbiOps endpoint name"),
        ("smollm2", "", "gpt", "MODEL_ALIASES", "alias=model"),
        ("smollm2", "", "gpt=llama3", "MODEL_ALIASES", "neither"),
        ("smollm2", "", "smollm2=smollm2", "MODEL_ALIASES", "already a model"),
        ("smollm2", "", "a=smollm2;a=smollm2", "MODEL_ALIASES", "defined twice"),
    ],
)
def test_inconsistent_configuration_names_the_variable(
    chat: str, embedding: str, aliases: str, variable: str, fragment: str
) -> None:
    with pytest.raises(CatalogError) as caught:
        Catalog.parse(chat, embedding, aliases)
    assert caught.value.variable == variable
    assert fragment in caught.value.problem
