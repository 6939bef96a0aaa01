"""``--build``: docker or podman, whichever is usable, and what each is asked to do.

The engines are fake executables on a ``PATH`` that holds nothing else, so a real docker or
podman on this machine is never run.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from proxy.deploy.errors import DeployError
from proxy.deploy.package import choose_engine
from proxy.deploy.plan import Options, make_plan

from .conftest import IMAGE_ID, Runner
from .fake_ubiops import FakeUbiOps

pytest.importorskip("ubiops")

TAG = "img-" + IMAGE_ID[:16]
BASE = ("--build", "--base-image", "registry/ubiops-base:1")
DOCKER_DOWN = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock"


class Engines:
    """A ``bin`` directory of fake engines, alone on ``PATH``; each logs its command lines."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.log = tmp_path / "engines.log"
        monkeypatch.setenv("PATH", str(self.bin))

    def add(self, name: str, *, daemon: bool = True) -> None:
        """Install a fake ``name`` (docker or podman) whose ``save`` writes a docker archive."""
        script = self.bin / name
        script.write_text(
            f"#!{sys.executable}\n"
            "import io, json, sys, tarfile\n"
            "args = sys.argv[1:]\n"
            f"open({str(self.log)!r}, 'a').write({name!r} + ' ' + ' '.join(args) + '\\n')\n"
            "if args[0] == 'info':\n"
            f"    if not {daemon}:\n"
            f"        print({DOCKER_DOWN!r}, file=sys.stderr)\n"
            "        sys.exit(1)\n"
            "    print('28.2.2')\n"
            "elif args[0] == 'save':\n"
            "    output = args[args.index('--output') + 1]\n"
            f"    data = json.dumps([{{'Config': 'blobs/sha256/{IMAGE_ID}'}}]).encode()\n"
            "    with tarfile.open(output, 'w') as tar:\n"
            "        info = tarfile.TarInfo('manifest.json'); info.size = len(data)\n"
            "        tar.addfile(info, io.BytesIO(data))\n"
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR)

    def commands(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def engines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Engines:
    return Engines(tmp_path, monkeypatch)


# -- choosing the engine ------------------------------------------------------------------------


def test_without_docker_or_podman_build_is_a_clear_error(
    deploy: Runner, fake: FakeUbiOps, engines: Engines
) -> None:
    result = deploy(*BASE)

    assert result.code == 1
    assert result.err.startswith(
        "error: --build needs docker (with a running daemon) or podman: docker is not installed; "
        "podman is not installed. Install or start one, or build the image elsewhere and pass the "
        "archive with --image"
    )
    assert fake.mutations() == []


def test_a_stopped_docker_daemon_without_podman_is_a_clear_error(
    deploy: Runner, fake: FakeUbiOps, engines: Engines
) -> None:
    engines.add("docker", daemon=False)

    result = deploy(*BASE)

    assert result.code == 1
    assert f"docker is installed but its daemon does not answer ({DOCKER_DOWN})" in result.err
    assert "podman is not installed" in result.err
    assert fake.mutations() == [], "nothing is changed when the image cannot be built"


def test_docker_with_its_daemon_builds_and_saves_and_the_result_is_uploaded(
    deploy: Runner, fake: FakeUbiOps, engines: Engines, tmp_path: Path
) -> None:
    engines.add("docker")
    engines.add("podman")

    result = deploy(*BASE, "--bake-models", "--image-output", str(tmp_path / "out" / "image.tar"))

    assert result.code == 0, result.err
    build, save = (c for c in engines.commands() if c.split()[1] in {"build", "save"})
    assert build.startswith("docker build --tag ollama-env:latest ")
    assert "--build-arg BASE_IMAGE=registry/ubiops-base:1" in build
    assert "--build-arg BAKE_CHAT_MODELS=smollm2" in build
    assert "--build-arg BAKE_EMBEDDING_MODELS=all-minilm:l6-v2" in build
    assert "--format" not in build
    assert save == f"docker save --output {tmp_path / 'out' / 'image.tar'} ollama-env:latest"
    assert not any(c.startswith("podman") for c in engines.commands())
    assert ("ollama-env", TAG) in fake.state.tags


@pytest.mark.parametrize("docker", ["stopped", "missing"])
def test_podman_builds_in_docker_format_when_docker_is_not_usable(
    deploy: Runner, fake: FakeUbiOps, engines: Engines, tmp_path: Path, docker: str
) -> None:
    if docker == "stopped":
        engines.add("docker", daemon=False)
    engines.add("podman")
    output = tmp_path / "image.tar"

    result = deploy(*BASE, "--image-output", str(output))

    assert result.code == 0, result.err
    build, save = (c for c in engines.commands() if c.startswith("podman"))
    assert build.startswith("podman build --format docker --tag ollama-env:latest ")
    assert "--build-arg BASE_IMAGE=registry/ubiops-base:1" in build
    assert save == f"podman save --format docker-archive --output {output} ollama-env:latest"
    assert f"$ {build}" in result.out
    reason = "docker is installed but its daemon" if docker == "stopped" else "docker is not"
    assert f"building with podman: {reason}" in result.out
    assert ("ollama-env", TAG) in fake.state.tags


def test_an_explicit_engine_is_used_or_refused_never_swapped(
    deploy: Runner, fake: FakeUbiOps, engines: Engines
) -> None:
    engines.add("docker", daemon=False)
    engines.add("podman")

    refused = deploy(*BASE, "--engine", "docker")
    assert refused.code == 1
    assert refused.err.startswith("error: --build needs docker: docker is installed but its")
    assert not any(c.startswith("podman") for c in engines.commands())

    engines.add("docker", daemon=True)
    chosen = deploy(*BASE, "--engine", "podman")
    assert chosen.code == 0, chosen.err
    assert [c.split()[:2] for c in engines.commands() if c.split()[1] != "info"] == [
        ["podman", "build"],
        ["podman", "save"],
    ]


def test_choose_engine_prefers_docker_then_podman(engines: Engines) -> None:
    engines.add("podman")
    assert choose_engine() == ("podman", str(engines.bin / "podman"))
    engines.add("docker")
    assert choose_engine() == ("docker", str(engines.bin / "docker"))
    assert choose_engine("podman") == ("podman", str(engines.bin / "podman"))
    (engines.bin / "podman").unlink()
    with pytest.raises(DeployError, match="--build needs podman: podman is not installed"):
        choose_engine("podman")


# -- the CA bundle and other build arguments ----------------------------------------------------


def test_the_ca_bundle_is_a_build_secret_and_build_args_pass_through(
    deploy: Runner, fake: FakeUbiOps, engines: Engines, tmp_path: Path
) -> None:
    engines.add("podman")
    bundle = tmp_path / "corporate-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")

    result = deploy(
        *BASE,
        "--ca-bundle",
        str(bundle),
        "--build-arg",
        "OLLAMA_URL=https://mirror.example/ollama-linux-amd64.tar.zst",
        "--build-arg",
        "OLLAMA_GPU=true",
    )

    assert result.code == 0, result.err
    build = next(c for c in engines.commands() if c.startswith("podman build"))
    assert f"--secret id=ca_bundle,src={bundle}" in build
    assert "--build-arg OLLAMA_URL=https://mirror.example/ollama-linux-amd64.tar.zst" in build
    assert "--build-arg OLLAMA_GPU=true" in build


def test_a_missing_ca_bundle_stops_before_building(
    deploy: Runner, fake: FakeUbiOps, engines: Engines, tmp_path: Path
) -> None:
    engines.add("docker")

    result = deploy(*BASE, "--ca-bundle", str(tmp_path / "missing.pem"))

    assert result.code == 1
    assert f"error: --ca-bundle {tmp_path / 'missing.pem'}: no such file" in result.err
    assert not any(c.split()[1] == "build" for c in engines.commands())
    assert fake.mutations() == []


# -- the plan ------------------------------------------------------------------------------------


def test_the_command_lines_of_each_engine() -> None:
    plan = make_plan(
        Options(
            project="p",
            build=True,
            base_image="reg/base:1",
            ca_bundle=Path("ca.pem"),
            build_args=("OLLAMA_URL=http://x/y=z",),
        )
    )
    spec = plan.build
    assert spec is not None
    assert spec.build_command("podman") == [
        "podman",
        "build",
        "--format",
        "docker",
        "--tag",
        "ollama-env:latest",
        "--secret",
        "id=ca_bundle,src=ca.pem",
        "--build-arg",
        "BASE_IMAGE=reg/base:1",
        "--build-arg",
        "OLLAMA_URL=http://x/y=z",
        ".",
    ]
    assert spec.save_command("podman") == [
        "podman",
        "save",
        "--format",
        "docker-archive",
        "--output",
        "build/ollama-ubiops.tar",
        "ollama-env:latest",
    ]
    assert spec.build_command()[:3] == ["docker", "build", "--tag"]
    text = "\n".join(plan.describe())
    assert "docker build --tag ollama-env:latest" in text
    assert "or podman build --format docker / podman save --format docker-archive" in text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (Options(project="p", engine="podman"), "--engine needs --build"),
        (Options(project="p", ca_bundle=Path("ca.pem")), "--ca-bundle needs --build"),
        (Options(project="p", build_args=("A=1",)), "--build-arg needs --build"),
        (Options(project="p", build=True, base_image="b", engine="nerdctl"), "--engine must be"),
        (Options(project="p", build=True, base_image="b", build_args=("A",)), "NAME=VALUE"),
        (Options(project="p", build=True, base_image="b", build_args=("1A=x",)), "NAME=VALUE"),
        (
            Options(project="p", build=True, base_image="b", build_args=("BASE_IMAGE=x",)),
            "--build-arg BASE_IMAGE: set by the command; use --base-image",
        ),
        (
            Options(project="p", build=True, base_image="b", build_args=("BAKE_CHAT_MODELS=x",)),
            "use --bake-models",
        ),
    ],
)
def test_bad_build_options_are_one_line_errors(options: Options, message: str) -> None:
    with pytest.raises(DeployError) as caught:
        make_plan(options)
    assert message in caught.value.message
    assert "\n" not in caught.value.message
