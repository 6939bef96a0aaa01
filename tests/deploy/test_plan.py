"""The desired state computed from options: pure, no API, no files."""

from __future__ import annotations

import pytest

from proxy.catalog import Catalog
from proxy.deploy.errors import DeployError
from proxy.deploy.plan import Options, Port, make_plan
from proxy.deploy.token import read_token


def test_defaults_follow_the_tutorial_with_the_proxy_on_loopback() -> None:
    plan = make_plan(Options(project="p"))

    assert plan.labels == {
        "openai-compatible": "true",
        "openai-model-names": "smollm2;all-minilm-l6-v2",
        "managed-by": "proxy-deploy",
    }
    assert plan.plain_env == {
        "OLLAMA_CHAT_MODELS": "smollm2",
        "OLLAMA_EMBEDDING_MODELS": "all-minilm:l6-v2",
        "MODEL_ALIASES": "",
        "PROXY_HOST": "127.0.0.1",
    }
    assert (plan.ports, plan.service, plan.build) == ((), None, None)
    assert len(plan.warnings) == 1
    assert "the models are not baked into the image" in plan.warnings[0]
    assert "timeout (default 300 s, at most 3600 s) includes that cold start" in plan.warnings[0]


def test_the_label_is_the_catalogs_and_the_lists_are_normalised() -> None:
    options = Options(
        project="p",
        chat_models=" smollm2 , smollm ",
        embedding_models="all-minilm:l6-v2",
        aliases="fast = smollm; embed=all-minilm:l6-v2",
    )
    plan = make_plan(options)

    expected = Catalog.parse(options.chat_models, options.embedding_models, options.aliases)
    assert plan.labels["openai-model-names"] == expected.openai_model_names()
    assert plan.plain_env["OLLAMA_CHAT_MODELS"] == "smollm2,smollm"
    assert plan.plain_env["MODEL_ALIASES"] == "fast=smollm:latest;embed=all-minilm:l6-v2"


def test_direct_access_binds_the_proxy_publicly() -> None:
    forwarded = make_plan(Options(project="p", port_forward=2222))
    served = make_plan(Options(project="p", service="svc"))

    assert forwarded.ports == (Port(public_port=2222, deployment_port=11434, protocol="tcp"),)
    assert forwarded.plain_env["PROXY_HOST"] == "0.0.0.0"
    assert served.service is not None
    assert served.service.authentication_required
    assert served.service.health_check_path == "/readyz"
    assert served.plain_env["PROXY_HOST"] == "0.0.0.0"


def test_build_args_carry_the_base_image_and_the_models_to_bake() -> None:
    plan = make_plan(Options(project="p", build=True, base_image="reg/base:1", bake_models=True))

    assert plan.build is not None
    assert dict(plan.build.build_args) == {
        "BASE_IMAGE": "reg/base:1",
        "BAKE_CHAT_MODELS": "smollm2",
        "BAKE_EMBEDDING_MODELS": "all-minilm:l6-v2",
    }
    assert plan.build.save_command()[:3] == ["docker", "save", "--output"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (Options(project=""), "no project"),
        (Options(project="p", build=True), "--build needs --base-image"),
        (Options(project="p", bake_models=True), "--bake-models needs --build"),
        (Options(project="p", min_instances=2, max_instances=1), "instances"),
        (Options(project="p", max_idle_time=5), "--max-idle-time"),
        (Options(project="p", instance_processes=0), "--instance-processes"),
        (Options(project="p", port_forward=70000), "--port-forward"),
        (Options(project="p", chat_models="", embedding_models=""), "no models"),
        (Options(project="p", embedding_models="smollm2"), "--embedding-models"),
        (Options(project="p", aliases="x=missing"), "--aliases"),
        (
            Options(project="p", chat_models="a:b,a-b"),
            "--chat-models: model 'a:b' has no name usable in UbiOps' openai-model-names label",
        ),
    ],
)
def test_bad_options_are_one_line_errors(options: Options, message: str) -> None:
    with pytest.raises(DeployError) as caught:
        make_plan(options)
    assert message in caught.value.message
    assert "\n" not in caught.value.message


def test_baked_models_need_no_warning() -> None:
    plan = make_plan(Options(project="p", build=True, base_image="b", bake_models=True))
    assert plan.warnings == ()


@pytest.mark.parametrize(
    ("min_instances", "fragment"),
    [
        (0, "with --min-instances 0 none runs at rest, so nothing answers until a request"),
        (1, "--min-instances 1 keeps that many running"),
    ],
)
def test_a_forwarded_port_is_warned_about(min_instances: int, fragment: str) -> None:
    plan = make_plan(Options(project="p", port_forward=2222, min_instances=min_instances))

    warning = plan.warnings[-1]
    assert warning.startswith("the forwarded port 2222 answers only while an instance runs")
    assert fragment in warning
    assert "each instance has its own address" in warning


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (Options(project="p", yes=True), "--yes confirms --delete"),
        (Options(project="p", delete=True, build=True, base_image="b"), "it takes no --build"),
        (
            Options(project="p", delete=True, port_forward=1, service="s"),
            "it takes no --port-forward, --service",
        ),
    ],
)
def test_delete_options(options: Options, message: str) -> None:
    with pytest.raises(DeployError, match=message):
        make_plan(options)


def test_a_shared_instance_type_is_warned_about() -> None:
    plan = make_plan(Options(project="p", instance_type="2048 MB + 0.5 vCPU"))
    assert "(Dedicated)" in plan.warnings[0]


def test_describe_names_no_secret_and_what_a_first_deploy_needs() -> None:
    text = "\n".join(make_plan(Options(project="p")).describe())
    assert "PROXY_API_KEY=<secret, kept if present, else generated>" in text
    assert "a first deploy needs --build or --image" in text


@pytest.mark.parametrize(
    ("value", "bare"),
    [
        ("abc123", "abc123"),
        ("Token abc123", "abc123"),
        (" Token abc123\n", "abc123"),
        ("ok1234", "ok1234"),
        ("Tokenized", "Tokenized"),
        ("Token Token x", "Token x"),
    ],
)
def test_the_token_prefix_is_removed_exactly_once(value: str, bare: str) -> None:
    assert read_token({"UBIOPS_API_TOKEN": value}) == bare


@pytest.mark.parametrize("value", ["", "   ", "Token ", "Token    "])
def test_an_empty_token_is_an_error(value: str) -> None:
    with pytest.raises(DeployError, match="UBIOPS_API_TOKEN is not set"):
        read_token({"UBIOPS_API_TOKEN": value})
