"""The command line: defaults from the environment, what a dry run says, the help."""

from __future__ import annotations

import pytest

from proxy.deploy import main
from proxy.deploy.plan import DEFAULT_API_HOST

from .conftest import Runner


def _help(capsys: pytest.CaptureFixture[str], environ: dict[str, str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(["--help"], environ)
    assert exited.value.code == 0
    return "".join(capsys.readouterr().out.split())  # argparse wraps lines, at hyphens too


def _squeezed(text: str) -> str:
    return "".join(text.split())


def test_help_shows_the_defaults_that_come_from_the_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = _help(
        capsys,
        {
            "UBIOPS_PROJECT": "my-project",
            "OLLAMA_CHAT_MODELS": "qwen2.5:0.5b",
            "UBIOPS_BASE_IMAGE": "registry/base:1",
        },
    )

    assert _squeezed("UbiOps project (from $UBIOPS_PROJECT) (default: my-project)") in text
    assert _squeezed("comma-separated (from $OLLAMA_CHAT_MODELS) (default: qwen2.5:0.5b)") in text
    assert _squeezed("(from $UBIOPS_BASE_IMAGE) (default: registry/base:1)") in text
    assert (
        _squeezed("comma-separated (or $OLLAMA_EMBEDDING_MODELS) (default: all-minilm:l6-v2)")
        in text
    )
    assert _squeezed(f"(or $UBIOPS_API_HOST) (default: {DEFAULT_API_HOST})") in text
    assert _squeezed("--delete") in text


def test_the_default_api_host_is_the_pinned_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    ubiops = pytest.importorskip("ubiops")
    monkeypatch.delenv("UBIOPS_API_HOST", raising=False)

    assert ubiops.Configuration(host=None).host == DEFAULT_API_HOST


def test_a_dry_run_names_the_models_from_the_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    environ = {
        "UBIOPS_PROJECT": "demo",
        "OLLAMA_CHAT_MODELS": "qwen2.5:0.5b,smollm2",
        "OLLAMA_EMBEDDING_MODELS": "",
        "MODEL_ALIASES": "fast=smollm2",
    }

    assert main(["--dry-run"], environ) == 0

    out = capsys.readouterr().out
    assert "OLLAMA_CHAT_MODELS='qwen2.5:0.5b,smollm2'" in out
    assert "OLLAMA_EMBEDDING_MODELS=''" in out
    assert "MODEL_ALIASES='fast=smollm2:latest'" in out
    assert "openai-model-names=qwen2.5-0.5b;smollm2;fast" in out
    assert "a first deploy needs --build or --image" in out
    assert main(["--dry-run", "--chat-models", "smollm2,smollm"], environ) == 0
    assert "OLLAMA_CHAT_MODELS='smollm2,smollm'" in capsys.readouterr().out, "a flag wins"


def test_a_dry_run_warns_about_cold_starts_and_forwarded_ports(deploy: Runner) -> None:
    result = deploy("--dry-run", "--port-forward", token=None)

    assert result.code == 0
    assert "warning: the models are not baked into the image" in result.out
    assert "warning: the forwarded port 11434 answers only while an instance runs" in result.out
