"""The deploy command end to end: the real ``ubiops`` client against the fake UbiOps API."""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import pytest

from proxy.catalog import Catalog

from .conftest import IMAGE_ID, TOKEN, Runner, make_image
from .fake_ubiops import DEDICATED, FakeUbiOps

pytest.importorskip("ubiops")

DEP = "ollama-multi-model-server"
BASE = "/v2/projects/demo"
VERSION_PATH = f"{BASE}/deployments/{DEP}/versions/v1"
TAG = "img-" + IMAGE_ID[:16]


def version(fake: FakeUbiOps, name: str = "v1") -> dict[str, object]:
    return fake.state.versions[(DEP, name)]


def env_value(fake: FakeUbiOps, name: str) -> object:
    item = fake.variable(DEP, "v1", name)
    return None if item is None else item["value"]


# -- first run, second run ---------------------------------------------------------------------


def test_first_run_creates_everything_in_dependency_order(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    result = deploy("--image", str(image))

    assert result.code == 0, result.err
    variables = f"{VERSION_PATH}/environment-variables"
    assert fake.mutations() == [
        ("POST", f"{BASE}/environments"),
        ("POST", f"{BASE}/environments/ollama-env/tags"),
        ("POST", f"{BASE}/environments/ollama-env/tags/{TAG}/build"),
        ("POST", f"{BASE}/deployments"),
        ("POST", f"{BASE}/deployments/{DEP}/versions"),
        ("POST", variables),
        ("POST", variables),
        ("POST", variables),
        ("POST", variables),
        ("POST", f"{VERSION_PATH}/revisions"),
        ("PATCH", VERSION_PATH),
    ]
    tag = fake.state.tags[("ollama-env", TAG)]
    assert tag["supports_request_format"] is True
    deployment = fake.state.deployments[DEP]
    assert (deployment["input_type"], deployment["output_type"]) == ("plain", "plain")
    assert deployment["supports_request_format"] is True
    v = version(fake)
    assert v["environment_name"] == "ollama-env"
    assert v["environment_tag"] == TAG
    assert v["instance_type_group_name"] == DEDICATED
    assert (v["instance_processes"], v["minimum_instances"], v["maximum_instances"]) == (3, 0, 1)
    assert v["maximum_idle_time"] == 900
    assert v["ports"] == []
    assert env_value(fake, "OLLAMA_CHAT_MODELS") == "smollm2"
    assert env_value(fake, "OLLAMA_EMBEDDING_MODELS") == "all-minilm:l6-v2"
    assert env_value(fake, "PROXY_HOST") == "127.0.0.1"
    assert fake.variable(DEP, "v1", "MODEL_ALIASES") is None, "empty values are not created"
    assert "created: environment ollama-env" in result.out
    assert "ready: version" in result.out
    assert "Deployment revision: success" in result.out, "the client's progress is shown"


def test_the_uploaded_zip_holds_deployment_package_at_its_root(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    assert deploy("--image", str(image)).code == 0

    (kind, _, data) = fake.state.uploads[-1]
    assert kind == "revision"
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
    assert names == ["deployment_package/deployment.py", "deployment_package/requirements.txt"]


def test_a_second_run_changes_nothing_and_says_so(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    assert deploy("--image", str(image)).code == 0
    before = len(fake.calls)

    for args in ((), ("--image", str(image))):
        result = deploy(*args)
        assert result.code == 0, result.err
        new = fake.calls[before:]
        assert [c for c in new if c.mutating] == [], "no create, update or upload"
        assert "up to date: nothing to change" in result.out
        assert "up to date: deployment package" in result.out
        before = len(fake.calls)
    assert len([u for u in fake.state.uploads if u[0] == "revision"]) == 1


def test_changed_options_update_only_what_differs(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    assert deploy("--image", str(image)).code == 0
    before = len(fake.calls)

    result = deploy("--max-instances", "2", "--chat-models", "smollm2, smollm")

    assert result.code == 0, result.err
    mutations = [(c.method, c.path) for c in fake.calls[before:] if c.mutating]
    assert mutations[0] == ("PATCH", VERSION_PATH)
    assert mutations[1][0] == "PATCH"
    assert "/environment-variables/" in mutations[1][1]
    assert len(mutations) == 2, "the unchanged package is not uploaded again"
    assert version(fake)["maximum_instances"] == 2
    assert env_value(fake, "OLLAMA_CHAT_MODELS") == "smollm2,smollm"
    assert "updated: version ollama-multi-model-server/v1 (labels, maximum_instances)" in (
        result.out
    )


def test_a_changed_package_is_uploaded_again(
    deploy: Runner, fake: FakeUbiOps, image: Path, package_dir: Path
) -> None:
    assert deploy("--image", str(image)).code == 0
    (package_dir / "deployment.py").write_text("class Deployment:\n    x = 1\n")

    result = deploy()

    assert result.code == 0, result.err
    assert len([u for u in fake.state.uploads if u[0] == "revision"]) == 2
    assert "uploaded: deployment package" in result.out
    assert deploy().out.count("uploaded:") == 0


def test_a_new_image_gets_a_new_tag_and_the_version_follows(
    deploy: Runner, fake: FakeUbiOps, image: Path, tmp_path: Path
) -> None:
    assert deploy("--image", str(image)).code == 0
    other = make_image(tmp_path / "other.tar", "cd" * 32)

    result = deploy("--image", str(other))

    assert result.code == 0, result.err
    assert version(fake)["environment_tag"] == "img-" + "cd" * 8
    assert "updated: version ollama-multi-model-server/v1 (environment_tag)" in result.out


def test_another_version_reuses_the_built_environment_image(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    assert deploy("--image", str(image)).code == 0

    result = deploy("--version", "v2")

    assert result.code == 0, result.err
    assert version(fake, "v2")["environment_tag"] == TAG
    assert "created: version ollama-multi-model-server/v2" in result.out


# -- labels and secrets ------------------------------------------------------------------------


def test_the_model_names_label_is_the_catalogs(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    chat, embedding, aliases = "smollm2,qwen2.5:0.5b", "all-minilm:l6-v2", "gpt-4o=smollm2"

    result = deploy(
        "--image",
        str(image),
        "--chat-models",
        chat,
        "--embedding-models",
        embedding,
        "--aliases",
        aliases,
    )

    assert result.code == 0, result.err
    labels = version(fake)["labels"]
    assert isinstance(labels, dict)
    assert labels["openai-compatible"] == "true"
    assert (
        labels["openai-model-names"] == Catalog.parse(chat, embedding, aliases).openai_model_names()
    )
    assert env_value(fake, "MODEL_ALIASES") == "gpt-4o=smollm2:latest"
    assert len(str(labels["deployment-package-sha256"])) == 40


def test_the_api_key_is_a_secret_and_is_never_shown(
    deploy: Runner, fake: FakeUbiOps, image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    result = deploy("--image", str(image))

    assert result.code == 0, result.err
    stored = fake.variable(DEP, "v1", "PROXY_API_KEY")
    assert stored is not None
    assert stored["secret"] is True
    key = str(stored["value"])
    assert len(key) >= 40
    assert key not in result.text
    assert key not in caplog.text
    assert TOKEN not in result.text
    assert "generated a new PROXY_API_KEY" in result.out

    again = deploy("--show-api-key")
    assert again.code == 0
    assert fake.variable(DEP, "v1", "PROXY_API_KEY") == stored, "an existing key is kept"
    assert key not in again.text
    assert "already stored as a secret" in again.out


def test_show_api_key_prints_a_new_key_once(deploy: Runner, fake: FakeUbiOps, image: Path) -> None:
    result = deploy("--image", str(image), "--show-api-key")

    key = str(env_value(fake, "PROXY_API_KEY"))
    assert result.out.count(key) == 1
    rotated = deploy("--rotate-api-key", "--show-api-key")
    new_key = str(env_value(fake, "PROXY_API_KEY"))
    assert new_key != key
    assert rotated.out.count(new_key) == 1
    assert key not in rotated.text


def test_a_plain_api_key_is_turned_into_a_secret(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    assert deploy("--image", str(image)).code == 0
    stored = fake.variable(DEP, "v1", "PROXY_API_KEY")
    assert stored is not None
    stored.update(secret=False, value="a-plain-key-0123456789")

    result = deploy()

    assert result.code == 0
    assert stored["secret"] is True
    assert stored["value"] == "a-plain-key-0123456789"
    assert "a-plain-key-0123456789" not in result.text


# -- dry run, port forwarding, service ---------------------------------------------------------


def test_dry_run_calls_nothing(deploy: Runner, fake: FakeUbiOps, image: Path) -> None:
    result = deploy("--image", str(image), "--service", "--port-forward", "--dry-run", token=None)

    assert result.code == 0, result.err
    assert fake.calls == []
    assert "dry run" in result.out
    assert "ports: 11434 -> 11434/tcp" in result.out
    assert "PROXY_API_KEY=<secret" in result.out
    assert "openai-model-names=smollm2;all-minilm-l6-v2" in result.out


def test_port_forwarding_opens_the_proxy_port_and_binds_publicly(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    result = deploy("--image", str(image), "--port-forward")

    assert result.code == 0, result.err
    assert version(fake)["ports"] == [
        {"public_port": 11434, "deployment_port": 11434, "protocol": "tcp"}
    ]
    assert env_value(fake, "PROXY_HOST") == "0.0.0.0"
    assert "Forwarded port 11434/tcp" in result.out
    assert "warning: the forwarded port 11434 answers only while an instance runs" in result.out
    assert 'api.instances_list("demo", "ollama-multi-model-server", "v1")' in result.out

    assert deploy("--port-forward", "2222").code == 0
    assert version(fake)["ports"] == [
        {"public_port": 2222, "deployment_port": 11434, "protocol": "tcp"}
    ]
    assert deploy("--port-forward", "2222").out.count("updated:") == 0

    assert deploy().code == 0
    assert version(fake)["ports"] == [], "without --port-forward the port is closed again"
    assert env_value(fake, "PROXY_HOST") == "127.0.0.1"


def test_service_is_created_with_authentication_and_a_readiness_check(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    result = deploy("--image", str(image), "--service")

    assert result.code == 0, result.err
    service = fake.state.services[f"{DEP}-v1"]
    assert service["authentication_required"] is True
    assert service["authentication_header_pass_through"] is False
    assert (service["deployment"], service["version"], service["port"]) == (DEP, "v1", 11434)
    assert version(fake)["health_check"] == {"port": 11434, "path": "/readyz"}
    assert env_value(fake, "PROXY_HOST") == "0.0.0.0"
    assert str(service["endpoint"]) in result.out

    again = deploy("--service")
    assert again.code == 0
    assert "up to date: service ollama-multi-model-server-v1" in again.out
    assert "up to date: nothing to change" in again.out

    fake.state.services[f"{DEP}-v1"]["authentication_required"] = False
    fixed = deploy("--service")
    assert "updated: service ollama-multi-model-server-v1 (authentication_required)" in fixed.out
    assert fake.state.services[f"{DEP}-v1"]["authentication_required"] is True


def test_a_named_service(deploy: Runner, fake: FakeUbiOps, image: Path) -> None:
    assert deploy("--image", str(image), "--service", "llm-proxy").code == 0
    assert "llm-proxy" in fake.state.services
