"""Static checks of the Dockerfile, .dockerignore and shell scripts (hadolint, shellcheck)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.testing.simulator import VERSION as SIMULATED_VERSION

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), " ".join(rest.split())))
    return result


def test_hadolint_is_clean() -> None:
    run = subprocess.run(
        [_tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_shellcheck_is_clean() -> None:
    scripts = sorted(str(p) for p in (ROOT / "scripts").glob("*.sh"))
    assert any(s.endswith("deploy.sh") for s in scripts)
    run = subprocess.run(
        [_tool("shellcheck"), *scripts], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_ollama_is_pinned_and_checksum_verified() -> None:
    args = dict(
        rest.split("=", 1) for keyword, rest in _instructions() if keyword == "ARG" and "=" in rest
    )
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["OLLAMA_VERSION"])
    assert re.fullmatch(r"[0-9a-f]{64}", args["OLLAMA_SHA256"])
    runs = " ".join(rest for keyword, rest in _instructions() if keyword == "RUN")
    assert "sha256sum --check --strict" in runs
    assert "releases/download/v${OLLAMA_VERSION}/${OLLAMA_ARCHIVE}" in runs
    assert not re.search(r"(curl|wget)[^|;&]*\|\s*(ba|z)?sh", DOCKERFILE.read_text())
    assert "install.sh" not in DOCKERFILE.read_text()


def test_the_image_ollama_is_the_release_the_tests_run_against() -> None:
    args = dict(
        rest.split("=", 1) for keyword, rest in _instructions() if keyword == "ARG" and "=" in rest
    )
    built = re.search(
        r"^OLLAMA_VERSION=(\S+)$", (ROOT / "scripts/real-ollama.sh").read_text(), re.M
    )
    assert built is not None
    assert args["OLLAMA_VERSION"] == built[1] == SIMULATED_VERSION


def test_the_image_runs_as_deployment_and_keeps_the_agent_entry_point() -> None:
    instructions = _instructions()
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users[-1] == "deployment"
    keywords = [keyword for keyword, _ in instructions]
    assert "CMD" not in keywords
    assert "ENTRYPOINT" not in keywords
    assert ("EXPOSE", "11434") in instructions
    health = next(rest for keyword, rest in instructions if keyword == "HEALTHCHECK")
    assert health.endswith('CMD ["python3", "-m", "proxy", "check"]')


def test_the_project_is_installed_from_the_lock_in_a_cache_friendly_order() -> None:
    instructions = _instructions()
    text = [f"{keyword} {rest}" for keyword, rest in instructions]
    lock = next(i for i, t in enumerate(text) if t.startswith("COPY") and "uv.lock" in t)
    export = next(i for i, t in enumerate(text) if "uv export --frozen --no-dev" in t)
    requirements = next(i for i, t in enumerate(text) if "--require-hashes -r requirements" in t)
    source = next(i for i, t in enumerate(text) if t.startswith("COPY") and "proxy/" in t)
    assert lock < export < requirements < source
    for keyword, rest in instructions:
        if keyword == "RUN" and "apt-get install" in rest:
            assert "--no-install-recommends" in rest
            assert "rm -rf /var/lib/apt/lists/*" in rest


def test_models_are_baked_only_when_asked() -> None:
    runs = [rest for keyword, rest in _instructions() if keyword == "RUN"]
    bake = next(r for r in runs if "python3 -m proxy pull" in r)
    assert "BAKE_CHAT_MODELS" in bake
    assert "BAKE_EMBEDDING_MODELS" in bake
    assert (
        "ENV",
        "OLLAMA_MODELS=/opt/ollama/models PIP_DISABLE_PIP_VERSION_CHECK=1 "
        "PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1",
    ) in _instructions()


def test_the_build_context_is_an_allow_list() -> None:
    lines = (ROOT / ".dockerignore").read_text().split()
    assert lines[lines.index("*") :][:1] == ["*"]
    assert {"!pyproject.toml", "!uv.lock", "!README.md", "!proxy/"} <= set(lines)


def test_deploy_sh_runs_the_module() -> None:
    run = subprocess.run(
        [str(ROOT / "scripts" / "deploy.sh"), "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "--port-forward" in run.stdout
    assert "--service" in run.stdout


def test_every_base_image_is_a_build_argument() -> None:
    instructions = _instructions()
    stages = {
        rest.split()[-1] for keyword, rest in instructions if keyword == "FROM" and " AS " in rest
    }
    defaults = dict(
        rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest
    )
    for keyword, rest in instructions:
        if keyword == "FROM":
            image = rest.split()[0]
            assert image in stages or re.fullmatch(r"\$\{\w+\}", image), rest
            if image.startswith("${"):
                assert defaults[image[2:-1]] == "python:3.13-slim-bookworm"


def test_the_archive_url_is_an_argument_and_still_checksum_verified() -> None:
    instructions = _instructions()
    args = dict(
        rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest
    )
    assert args["OLLAMA_URL"] == '""'
    assert args["BAKE_MODELS_URL"] == '""'
    runs = [rest for keyword, rest in instructions if keyword == "RUN"]
    download = next(r for r in runs if "OLLAMA_URL" in r)
    assert '"${OLLAMA_URL:-https://github.com/ollama/ollama/releases/download/v' in download
    assert download.index("urlretrieve") < download.index("sha256sum --check --strict")
    models = next(r for r in runs if "BAKE_MODELS_URL" in r)
    assert models.index("urlretrieve") < models.index("sha256sum --check --strict")
    assert "BAKE_MODELS_SHA256 must be" in models


def test_the_ca_bundle_is_a_build_secret_used_by_every_network_step_only() -> None:
    instructions = _instructions()
    runs = [rest for keyword, rest in instructions if keyword == "RUN"]
    network = [r for r in runs if "urlretrieve" in r or "pip install" in r or "proxy pull" in r]
    assert len(network) == 6
    for run in network:
        assert run.startswith("--mount=type=secret,id=ca_bundle,mode=0444 "), run
        assert "SSL_CERT_FILE=/run/secrets/ca_bundle" in run
    for keyword, rest in instructions:
        if keyword in {"ENV", "ARG"}:
            assert "SSL_CERT_FILE" not in rest
            assert "PIP_CERT" not in rest
            assert "ca_bundle" not in rest


def test_an_externally_managed_python_gets_a_virtual_environment() -> None:
    instructions = _instructions()
    assert ("ENV", 'PATH="/opt/venv/bin:${PATH}"') in instructions
    setup = next(r for k, r in instructions if k == "RUN" and "useradd" in r)
    assert "EXTERNALLY-MANAGED" in setup
    assert "sys.prefix != sys.base_prefix" in setup
    assert "python3 -m venv /opt/venv && chown -R deployment: /opt/venv" in setup
