"""What the deploy command says when it cannot do its job: the token, the project, the instance
type, failed builds, objects in the way. One line (plus a build log tail), never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import IMAGE_ID, Runner
from .fake_ubiops import DEDICATED, FakeUbiOps

pytest.importorskip("ubiops")

DEP = "ollama-multi-model-server"
TAG = "img-" + IMAGE_ID[:16]


def version(fake: FakeUbiOps, name: str = "v1") -> dict[str, object]:
    return fake.state.versions[(DEP, name)]


# -- the token ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environment_value", "accepted"),
    [
        ("good-token", "good-token"),
        ("Token good-token", "good-token"),
        ("  Token good-token\n", "good-token"),
        ("ok1234abcdef", "ok1234abcdef"),
        ("Token ok1234abcdef", "ok1234abcdef"),
        ("Tokenized-0123", "Tokenized-0123"),
    ],
)
def test_the_token_works_with_or_without_its_prefix(
    deploy: Runner, fake: FakeUbiOps, image: Path, environment_value: str, accepted: str
) -> None:
    fake.state.tokens = {accepted}

    result = deploy("--image", str(image), token=environment_value)

    assert result.code == 0, result.err
    assert accepted not in result.text


def test_a_missing_token_is_a_clear_error(deploy: Runner, fake: FakeUbiOps) -> None:
    result = deploy(token=None)

    assert result.code == 1
    assert result.err.startswith("error: UBIOPS_API_TOKEN is not set")
    assert fake.calls == []


# -- errors ------------------------------------------------------------------------------------


def test_a_bad_token_is_a_one_line_error(deploy: Runner, fake: FakeUbiOps, image: Path) -> None:
    result = deploy("--image", str(image), token="Token wrong-token")

    assert result.code == 1
    assert result.err.strip().splitlines() == [
        "error: the UbiOps API rejected the token (401 Unauthorized): check UBIOPS_API_TOKEN"
    ]
    assert "Traceback" not in result.text
    assert "wrong-token" not in result.text


def test_a_missing_project_is_a_one_line_error(deploy: Runner, image: Path) -> None:
    result = deploy("--image", str(image), project="nope")

    assert result.code == 1
    assert len(result.err.strip().splitlines()) == 1
    assert "project 'nope' not found (404)" in result.err


def test_a_missing_instance_type_lists_the_available_ones(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    result = deploy("--image", str(image), "--instance-type", "65536 MB + 16 vCPU (Dedicated)")

    assert result.code == 1
    assert "'65536 MB + 16 vCPU (Dedicated)' is not available in project 'demo'" in result.err
    assert f"'{DEDICATED}'" in result.err
    assert "'2048 MB + 0.5 vCPU'" in result.err
    assert fake.mutations() == []


def test_instance_types_are_read_across_pages(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    fake.state.instance_types = [f"type {i}" for i in range(150)] + [DEDICATED]

    assert deploy("--image", str(image)).code == 0
    pages = [c for c in fake.calls if c.path.endswith("/instance-type-groups")]
    assert [c.query.get("cursor") for c in pages] == [None, "100"]


def test_a_shared_instance_type_gets_a_warning(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    result = deploy("--image", str(image), "--instance-type", "2048 MB + 0.5 vCPU")

    assert result.code == 0
    assert "warning: instance type '2048 MB + 0.5 vCPU' is not a (Dedicated) type" in result.out


def test_a_failed_package_build_shows_the_log_tail(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    fake.state.fail_revision_build = "Deployment code could not be loaded"
    fake.state.build_logs = [f"line {i}" for i in range(30)] + ["ImportError: no module proxy"]

    result = deploy("--image", str(image))

    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert lines[0] == (
        "error: build of version v1 failed: Deployment revision: failed: "
        "Deployment code could not be loaded"
    )
    assert lines[-1].strip() == "ImportError: no module proxy"
    assert "line 10" not in result.err, "only the tail"
    assert "line 11" in result.err
    assert "Traceback" not in result.text
    assert any("deployment_version_revision_id=`" in q for q in fake.state.log_queries)
    assert "deployment-package-sha256" not in version(fake)["labels"]  # type: ignore[operator]

    fake.state.fail_revision_build = None
    retry = deploy()
    assert retry.code == 0
    assert "uploaded: deployment package" in retry.out, "a failed package is uploaded again"


def test_a_failed_image_build_shows_the_log_tail(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    fake.state.fail_environment_build = "not a docker image archive"
    fake.state.build_logs = ["unpacking", "error: invalid tar header"]

    result = deploy("--image", str(image))

    assert result.code == 1
    assert result.err.startswith(
        f"error: build of environment image ollama-env:{TAG} failed: "
        "Environment: failed: not a docker image archive"
    )
    assert "error: invalid tar header" in result.err
    assert not fake.state.deployments, "nothing is created on top of a failed image"


def test_no_environment_and_no_image_is_a_clear_error(deploy: Runner, fake: FakeUbiOps) -> None:
    result = deploy()

    assert result.code == 1
    assert "environment 'ollama-env' does not exist: pass --image" in result.err
    assert fake.mutations() == []


def test_an_existing_structured_deployment_is_refused(
    deploy: Runner, fake: FakeUbiOps, image: Path
) -> None:
    fake.state.deployments[DEP] = {
        "id": "d1",
        "name": DEP,
        "project": "demo",
        "input_type": "structured",
        "output_type": "structured",
        "supports_request_format": True,
    }

    result = deploy("--image", str(image))

    assert result.code == 1
    assert "needs plain input and output" in result.err
