from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.catalog import (
    LABEL_NAME_MAX,
    Catalog,
    CatalogError,
    ModelKind,
    UnknownModelError,
    label_name,
    normalise,
)

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


@pytest.mark.parametrize(
    ("name", "cloud"),
    [
        ("gpt-oss:120b-cloud", True),
        ("qwen3-coder:cloud", True),
        ("ubiops-deployment/d/v/deepseek-v3.1:671B-CLOUD", True),
        ("smollm2:135m", False),
        ("cloud", False),
        ("cloud-model:latest", False),
        ("host:8080/cloud", False),
    ],
)
def test_a_cloud_model_request_says_why_it_is_not_served(
    catalog: Catalog, name: str, cloud: bool
) -> None:
    with pytest.raises(UnknownModelError) as caught:
        catalog.resolve(name)
    assert ("ollama.com cloud model" in str(caught.value)) is cloud
    assert "smollm2" in str(caught.value)


def test_label_value_holds_the_label_safe_names_and_each_resolves(catalog: Catalog) -> None:
    label = catalog.openai_model_names()
    # all-minilm:l6-v2 is labelled as UbiOps' tutorial does; the operator's alias is the same.
    assert label == "smollm2;smollm;all-minilm-l6-v2;nomic-embed-text"
    for name in label.split(";"):
        assert catalog.resolve(f"ubiops-deployment/d/v/{name}").tag


def test_listings_and_errors_use_the_operators_names(catalog: Catalog) -> None:
    assert catalog.names == (
        "smollm2",
        "smollm",
        "all-minilm:l6-v2",
        "nomic-embed-text",
        "all-minilm-l6-v2",
    )
    assert [(name, model.tag) for name, model in catalog.listing()][2:] == [
        ("all-minilm:l6-v2", "all-minilm:l6-v2"),
        ("nomic-embed-text", "nomic-embed-text:latest"),
        ("all-minilm-l6-v2", "all-minilm:l6-v2"),
    ]


def test_a_label_name_resolves_without_an_alias() -> None:
    catalog = Catalog.parse("smollm2:135m,hf.co/Org/Repo-GGUF:Q4_K_M", "all-minilm:l6-v2")

    assert catalog.openai_model_names() == (
        "smollm2-135m;hf.co-org-repo-gguf-q4_k_m;all-minilm-l6-v2"
    )
    for label, model in catalog.label_names():
        for spelling in (label, label.upper(), f"ubiops-deployment/dep//{label}"):
            assert catalog.resolve(spelling) == model
    assert catalog.names == ("smollm2:135m", "hf.co/Org/Repo-GGUF:Q4_K_M", "all-minilm:l6-v2")
    with pytest.raises(UnknownModelError) as caught:
        catalog.resolve("llama3")
    assert "smollm2-135m" not in str(caught.value), "errors quote the operator's names"


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("smollm2", "smollm2"),
        ("all-minilm:l6-v2", "all-minilm-l6-v2"),
        ("qwen2.5:0.5b", "qwen2.5-0.5b"),
        ("SmolLM2:Latest", "smollm2-latest"),
        ("hf.co/Org/Repo-GGUF:Q4_K_M", "hf.co-org-repo-gguf-q4_k_m"),
        ("_x.", "x"),
        (":::", ""),
    ],
)
def test_label_name(name: str, label: str) -> None:
    assert label_name(name) == label


@pytest.mark.parametrize(
    ("chat", "aliases", "fragment"),
    [
        (
            "a:b,a-b",
            "",
            "model 'a:b' has no name usable in UbiOps' openai-model-names label "
            "('a-b' is the name of 'a-b')",
        ),
        (
            "x/y,x:y",
            "",
            "model 'x/y' has no name usable in UbiOps' openai-model-names label "
            "('x-y' would also name 'x:y')",
        ),
        ("m" * (LABEL_NAME_MAX + 1), "", f"is longer than {LABEL_NAME_MAX} characters"),
    ],
)
def test_a_label_that_cannot_be_formed_is_an_error_naming_the_model(
    chat: str, aliases: str, fragment: str
) -> None:
    catalog = Catalog.parse(chat, "", aliases)

    with pytest.raises(CatalogError) as caught:
        catalog.openai_model_names()
    assert caught.value.variable == "OLLAMA_CHAT_MODELS"
    assert fragment in caught.value.problem
    assert "give it an alias" in caught.value.problem
    assert catalog.resolve(chat.split(",")[0]), "the proxy still serves every model"


def test_an_alias_gives_a_model_its_label_name() -> None:
    long_name = "m" * (LABEL_NAME_MAX + 1)
    catalog = Catalog.parse(f"x/y,x:y,{long_name}", "", f"xy=x/y;xy2=x:y;short={long_name}")

    assert catalog.openai_model_names() == "xy;xy2;short"
    assert catalog.resolve("ubiops-deployment/d/v/short").tag == f"{long_name}:latest"


def test_an_ambiguous_label_form_resolves_to_nobody() -> None:
    catalog = Catalog.parse("x/y,x:y", "", "xy=x/y;xy2=x:y")

    with pytest.raises(UnknownModelError):
        catalog.resolve("x-y")


@given(
    st.lists(
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,12}(:[A-Za-z0-9._-]{1,6})?", fullmatch=True),
        min_size=1,
        max_size=6,
    )
)
def test_every_label_name_is_label_safe_and_resolves_to_its_model(names: list[str]) -> None:
    catalog = Catalog.parse(",".join(names), "")
    try:
        value = catalog.openai_model_names()
    except CatalogError:
        return
    labels = value.split(";")
    assert len(labels) == len(set(labels))
    for label, model in catalog.label_names():
        assert 0 < len(label) <= LABEL_NAME_MAX
        assert label == label_name(label)
        assert catalog.resolve(label) == model
    for model in catalog:
        assert catalog.label_name_of(model) in labels


@pytest.mark.parametrize(
    ("chat", "embedding", "aliases", "variable", "fragment"),
    [
        ("smollm2", "smollm2:latest", "", "OLLAMA_EMBEDDING_MODELS", "already listed as a chat"),
        ("bad name", "", "", "OLLAMA_CHAT_MODELS", "not a valid"),
        ("ubiops-deployment/d/v/m", "", "", "OLLAMA_CHAT_MODELS", "not the UbiOps endpoint name"),
        ("smollm2,gpt-oss:120b-cloud", "", "", "OLLAMA_CHAT_MODELS", "ollama.com cloud model"),
        ("", "embeddinggemma:Cloud", "", "OLLAMA_EMBEDDING_MODELS", "ollama.com cloud model"),
        ("smollm2", "", "big=smollm2;x:cloud=smollm2", "MODEL_ALIASES", "cloud model"),
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
