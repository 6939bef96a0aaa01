"""What the fake UbiOps API enforces (labels, the request-format match, built tags), and how the
deploy command stays inside those rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import IMAGE_ID, TOKEN, Runner
from .fake_ubiops import FakeUbiOps

ubiops = pytest.importorskip("ubiops")

DEP = "ollama-multi-model-server"
TAG = "img-" + IMAGE_ID[:16]


def _api(fake: FakeUbiOps) -> Any:
    configuration = ubiops.Configuration(host=fake.url, api_key={"Authorization": "Token " + TOKEN})
    return ubiops.CoreApi(ubiops.ApiClient(configuration))


def _version(api: Any, name: str, **fields: Any) -> Any:
    data = ubiops.DeploymentVersionCreate(
        version=name, environment_name="ollama-env", environment_tag=TAG, **fields
    )
    return api.deployment_versions_create("demo", DEP, data)


@pytest.mark.parametrize(
    "labels",
    [
        {"openai-model-names": "smollm2;all-minilm:l6-v2"},
        {"openai-model-names": "smollm2,all-minilm"},
        {"openai-model-names": "SmolLM2"},
        {"openai-model-names": "m" * 64},
        {"openai-model-names": "smollm2;"},
        {"Managed-By": "x"},
    ],
)
def test_the_fake_refuses_labels_outside_the_rule(
    deploy: Runner, fake: FakeUbiOps, image: Path, labels: dict[str, str]
) -> None:
    assert deploy("--image", str(image)).code == 0
    api = _api(fake)

    with pytest.raises(ubiops.ApiException) as caught:
        _version(api, "v2", labels=labels)
    assert caught.value.status == 400
    assert _version(api, "v3", labels={"openai-model-names": "smollm2;all-minilm-l6-v2"})


def test_the_fake_refuses_a_tag_whose_request_format_differs_from_the_deployments(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    assert deploy("--image", str(image)).code == 0
    fake.state.tags[("ollama-env", TAG)]["supports_request_format"] = False
    api = _api(fake)

    with pytest.raises(ubiops.ApiException) as caught:
        _version(api, "v2")
    assert caught.value.status == 400
    assert "must match" in str(caught.value.body)


def test_the_fake_refuses_to_flip_the_request_format_of_a_built_tag(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    assert deploy("--image", str(image)).code == 0
    api = _api(fake)
    data = ubiops.EnvironmentTagUpdate(supports_request_format=False)

    with pytest.raises(ubiops.ApiException) as caught:
        api.environment_tags_update("demo", "ollama-env", TAG, data)
    assert caught.value.status == 400


def test_deploy_stops_on_a_built_tag_without_the_request_format(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    assert deploy("--image", str(image)).code == 0
    fake.state.tags[("ollama-env", TAG)]["supports_request_format"] = False
    before = len(fake.calls)

    result = deploy("--image", str(image))

    assert result.code == 1
    assert result.err.startswith(
        f"error: environment image ollama-env:{TAG} is built without supports_request_format"
    )
    assert "does not add UbiOps' request agent to a built image" in result.err
    assert f"delete tag {TAG} of environment 'ollama-env'" in result.err
    assert [c for c in fake.calls[before:] if c.mutating] == [], "the flag is never flipped"


def test_everything_deploy_creates_carries_the_managed_by_label(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    assert deploy("--image", str(image), "--service").code == 0

    for labels in (
        fake.state.environments["ollama-env"]["labels"],
        fake.state.deployments[DEP]["labels"],
        fake.state.versions[(DEP, "v1")]["labels"],
        fake.state.services[f"{DEP}-v1"]["labels"],
    ):
        assert labels["managed-by"] == "proxy-deploy"
