"""Requests through the real ``ubiops`` client, end to end: the fake UbiOps API (deployed to by
``deploy.sh``) hands them to an emulated instance running the real deployment package, which
runs the proxy and the simulator. The README's client example is run as written, and so is the
snippet ``deploy.sh`` prints; ``stream_deployment_request`` is driven to its errors too."""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.testing.simulator import expected_text
from proxy.testing.ubiops_instance import UbiOpsInstance
from tests.deployment.conftest import PACKAGE_DIR, sim_env

from .conftest import TOKEN, Runner
from .fake_ubiops import FakeUbiOps

ubiops = pytest.importorskip("ubiops")

pytestmark = pytest.mark.slow

DEP = "ollama-multi-model-server"
README = Path(__file__).resolve().parents[2] / "README.md"
NUM_TOKENS = 8
STARTED_TIMEOUT = 60.0
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def served(
    deploy: Runner, fake: FakeUbiOps, image: Path, tmp_path: Path
) -> Iterator[tuple[FakeUbiOps, Any]]:
    """A deployed version answered by a 2-process emulated instance; and a client of the fake."""
    assert deploy("--image", str(image), "--chat-models", "smollm2").code == 0
    env = sim_env(
        tmp_path,
        OLLAMA_CHAT_MODELS="smollm2",
        OLLAMA_EMBEDDING_MODELS="all-minilm:l6-v2",
        SIM_NUM_TOKENS=str(NUM_TOKENS),
    )
    configuration = ubiops.Configuration(host=fake.url, api_key={"Authorization": "Token " + TOKEN})
    api = ubiops.CoreApi(ubiops.ApiClient(configuration))
    with UbiOpsInstance(PACKAGE_DIR, processes=2, env=env, deployment=DEP) as instance:
        instance.wait_started(STARTED_TIMEOUT)
        fake.instances[DEP, "v1"] = instance
        yield fake, api
    api.api_client.close()


def _readme_example() -> str:
    """The first Python block of the README's "Calling a deployment" section."""
    section = README.read_text().split("## Calling a deployment", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None
    return found.group(1)


def test_the_readme_example_runs_as_written(served: tuple[FakeUbiOps, Any]) -> None:
    _, api = served
    printed = io.StringIO()

    with contextlib.redirect_stdout(printed):
        exec(_readme_example(), {"api": api, "P": "demo", "D": DEP})

    text = expected_text("smollm2", HI, NUM_TOKENS)
    assert printed.getvalue() == f"{text}\n{text}"


def test_the_snippet_deploy_prints_runs(
    served: tuple[FakeUbiOps, Any], deploy: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = deploy("--chat-models", "smollm2").out
    snippet = out.split("import json, os, ubiops", 1)[1].split("# The OpenAI-compatible", 1)[0]
    monkeypatch.setenv("UBIOPS_API_TOKEN", TOKEN)
    printed = io.StringIO()

    with contextlib.redirect_stdout(printed):
        exec("import json, os, ubiops" + snippet, {})

    whole, streamed = printed.getvalue().split("\n", 1)
    streamed = streamed.removeprefix("\n")  # the result is the proxy's body, newline included
    text = expected_text("smollm2", [{"role": "user", "content": "Hello"}], NUM_TOKENS)
    assert json.loads(whole)["choices"][0]["message"]["content"] == text
    assert streamed == text


def test_a_stream_yields_each_update_then_the_response_with_the_usage_chunk_last(
    served: tuple[FakeUbiOps, Any],
) -> None:
    _, api = served
    body = {"model": "ubiops-deployment/x/v1/smollm2", "messages": HI, "stream": True}

    items = list(
        ubiops.utils.stream_deployment_request(
            api.api_client, "demo", DEP, version="v1", data=json.dumps(body), full_response=True
        )
    )

    *chunks, response = items
    assert isinstance(response, ubiops.DeploymentRequestCreateResponse)
    assert response.status == "completed"
    assert json.loads(response.result) == [json.loads(c) for c in chunks]
    parsed = [json.loads(c) for c in chunks]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in parsed[:-1])
    assert content == expected_text("smollm2", HI, NUM_TOKENS)
    assert parsed[-1]["choices"] == []
    assert parsed[-1]["usage"]["completion_tokens"] == NUM_TOKENS
    assert all(c["model"] == body["model"] for c in parsed), "the model as the client named it"


def test_a_failed_request_raises_with_its_message(served: tuple[FakeUbiOps, Any]) -> None:
    _, api = served
    body = {"model": "llama3", "messages": HI, "stream": True}

    with pytest.raises(ubiops.UbiOpsException) as caught:
        list(
            ubiops.utils.stream_deployment_request(
                api.api_client, "demo", DEP, data=json.dumps(body)
            )
        )

    assert str(caught.value) == (
        "Request failed with error message: model 'llama3' is not served by this deployment; "
        "available models: smollm2, all-minilm:l6-v2"
    )
    direct = api.deployment_requests_create("demo", DEP, data=json.dumps(body | {"stream": False}))
    assert direct.status == "failed"
    assert "'llama3' is not served" in direct.error_message


def test_plain_input_must_be_text_and_the_timeout_within_range(
    served: tuple[FakeUbiOps, Any],
) -> None:
    _, api = served
    body = {"model": "smollm2", "messages": HI}

    with pytest.raises(ubiops.ApiException) as caught:
        api.deployment_requests_create("demo", DEP, data=body)
    assert caught.value.status == 400
    assert "send the data as a string, e.g. json.dumps(...)" in caught.value.body
    # The client does not check the stream's HTTP status: a refused stream is merely empty.
    assert (
        list(ubiops.utils.stream_deployment_request(api.api_client, "demo", DEP, data=body)) == []
    )
    with pytest.raises(ubiops.ApiException, match="timeout must be between 10 and 3600"):
        api.deployment_requests_create("demo", DEP, data=json.dumps(body), timeout=5)


def test_a_version_without_the_request_format_takes_no_requests(
    served: tuple[FakeUbiOps, Any],
) -> None:
    fake, api = served
    fake.state.deployments[DEP]["supports_request_format"] = False

    with pytest.raises(ubiops.ApiException, match="does not support requests"):
        api.deployment_requests_create("demo", DEP, data=json.dumps({"model": "smollm2"}))


def test_a_label_name_reaches_its_model_through_a_ubiops_request(
    served: tuple[FakeUbiOps, Any],
) -> None:
    fake, api = served
    labels = str(fake.state.versions[DEP, "v1"]["labels"]["openai-model-names"])  # type: ignore[index]
    assert labels.split(";") == ["smollm2", "all-minilm-l6-v2"]

    for model in ("all-minilm-l6-v2", f"ubiops-deployment/{DEP}/v1/all-minilm-l6-v2"):
        body = {"model": model, "input": ["a", "b"]}
        result = api.deployment_requests_create("demo", DEP, data=json.dumps(body))
        assert result.status == "completed", result.error_message
        assert [len(item["embedding"]) for item in json.loads(result.result)["data"]] == [384, 384]
