"""The command line: defaults from the environment, what a dry run says, the help (every
option with a help text and its default, shown once, in one form)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.deploy import main
from proxy.deploy.cli import _default_package_dir, _parser
from proxy.deploy.plan import DEFAULT_API_HOST

from .conftest import Runner


def _options_help(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]
) -> dict[str, str]:
    """Every option's help text as ``--help`` shows it, by its first flag (unwrapped)."""
    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps at the terminal's width
    with pytest.raises(SystemExit) as exited:
        main(["--help"], environ)
    assert exited.value.code == 0
    text = capsys.readouterr().out
    options = text.split("\noptions:\n", 1)[1].split("\nwhat goes where:\n", 1)[0]
    entries: dict[str, str] = {}
    flag = ""
    for line in options.splitlines():
        if match := re.match(r"^  (-[^ ,]+)(?:.*?(?:\s{2,}|$))(.*)$", line):
            flag = match.group(1)
            entries[flag] = match.group(2).strip()
        elif line.startswith("    ") and flag:
            entries[flag] = f"{entries[flag]} {line.strip()}".strip()
        else:
            flag = ""
    return entries


def _flags_of_the_parser(environ: dict[str, str]) -> dict[str, bool]:
    """``{first flag: whether it takes a value}`` for every option the command has."""
    actions = _parser(environ)._actions
    return {a.option_strings[0]: a.nargs != 0 for a in actions if a.option_strings}


DEFAULT_NOTE = re.compile(
    r"\(default: (?:\$[A-Z_]+, else [^()]+|[^()$]+, from \$[A-Z_]+|[^()$]+(?:\([^()]*\))?)\)$"
)
"""The one form of a default: ``(default: X)``, ``(default: $VAR, else X)`` or ``(default: X,
from $VAR)`` (X itself may hold one parenthesis, as the instance type's "(Dedicated)" does)."""


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"UBIOPS_API_HOST": "https://example.test/v2", "UBIOPS_PROJECT": "p", "MODEL_ALIASES": ""},
    ],
)
def test_every_option_has_help_and_shows_its_default_once(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    environ: dict[str, str],
) -> None:
    shown = _options_help(capsys, monkeypatch, environ)
    flags = _flags_of_the_parser(environ)

    assert shown.keys() == flags.keys()
    for flag, takes_value in flags.items():
        text = shown[flag]
        assert text, f"{flag} has no help"
        assert text.lower().count("default") <= 1, f"{flag}: {text}"
        if takes_value:
            assert DEFAULT_NOTE.search(text), f"{flag} does not end with its default: {text}"


def test_help_shows_the_defaults_of_the_options_that_had_none(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shown = _options_help(capsys, monkeypatch, {})

    assert shown["--deployment"].endswith("(default: ollama-multi-model-server)")
    assert shown["--min-instances"].endswith("(default: 0)")
    assert shown["--max-instances"].endswith("(default: 1)")
    assert shown["--package-dir"].endswith(f"(default: {_default_package_dir()})")
    assert shown["--api-host"].endswith(f"(default: $UBIOPS_API_HOST, else {DEFAULT_API_HOST})")
    assert shown["--project"].endswith("(default: $UBIOPS_PROJECT, else none)")


def test_help_shows_the_defaults_that_come_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shown = _options_help(
        capsys,
        monkeypatch,
        {
            "UBIOPS_PROJECT": "my-project",
            "OLLAMA_CHAT_MODELS": "qwen2.5:0.5b",
            "UBIOPS_BASE_IMAGE": "registry/base:1",
            "UBIOPS_API_HOST": "https://example.test/v2",
            "MODEL_ALIASES": "fast=smollm2%x",  # argparse formats help with %
        },
    )

    assert shown["--project"].endswith("(default: my-project, from $UBIOPS_PROJECT)")
    assert (
        shown["--chat-models"]
        == "comma-separated (default: qwen2.5:0.5b, from $OLLAMA_CHAT_MODELS)"
    )
    assert shown["--base-image"].endswith("(default: registry/base:1, from $UBIOPS_BASE_IMAGE)")
    assert shown["--embedding-models"] == (
        "comma-separated (default: $OLLAMA_EMBEDDING_MODELS, else all-minilm:l6-v2)"
    )
    assert shown["--api-host"].endswith("(default: https://example.test/v2, from $UBIOPS_API_HOST)")
    assert shown["--aliases"].endswith("(default: fast=smollm2%x, from $MODEL_ALIASES)")
    assert "--delete" in shown


def test_help_as_deploy_sh_runs_it(tmp_path: Path) -> None:
    """``python -m proxy.deploy --help`` in a process of its own: no line names two defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UBIOPS_", "OLLAMA_"))}
    result = subprocess.run(
        [sys.executable, "-m", "proxy.deploy", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "COLUMNS": "400"},
        cwd=tmp_path,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: deploy.sh ")
    option_lines = [line for line in result.stdout.splitlines() if line.startswith("  -")]
    assert len(option_lines) > 20
    assert not [line for line in option_lines if line.count("default") > 1]
    assert f"(default: $UBIOPS_API_HOST, else {DEFAULT_API_HOST})" in result.stdout


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
