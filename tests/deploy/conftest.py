"""Fixtures of the deploy suite: the fake UbiOps API, a deployment package, an image archive."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.deploy import main

from .fake_ubiops import FakeUbiOps, serve

TOKEN = "good-token"
PROJECT = "demo"
IMAGE_ID = "ab" * 32


@dataclass(frozen=True)
class Result:
    """What one run of the command returned and printed."""

    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeUbiOps]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with serve() as server:
        yield server


@pytest.fixture
def package_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "deployment_package"
    directory.mkdir()
    (directory / "deployment.py").write_text("class Deployment:\n    pass\n")
    (directory / "requirements.txt").write_text("")
    cache = directory / "__pycache__"
    cache.mkdir()
    (cache / "deployment.cpython-313.pyc").write_bytes(b"\0")
    return directory


def make_image(path: Path, image_id: str = IMAGE_ID) -> Path:
    """A minimal `docker save` archive: a manifest naming the image config."""
    manifest = json.dumps([{"Config": f"blobs/sha256/{image_id}", "Layers": []}]).encode()
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    return path


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return make_image(tmp_path / "ollama-ubiops.tar")


Runner = Callable[..., Result]


@pytest.fixture
def deploy(fake: FakeUbiOps, package_dir: Path, capsys: pytest.CaptureFixture[str]) -> Runner:
    """Run ``python -m proxy.deploy`` in-process against the fake; returns a :class:`Result`."""

    def run(*args: str, token: str | None = TOKEN, project: str = PROJECT) -> Result:
        environ = {"UBIOPS_API_HOST": fake.url, "UBIOPS_PROJECT": project}
        if token is not None:
            environ["UBIOPS_API_TOKEN"] = token
        capsys.readouterr()
        code = main(["--package-dir", str(package_dir), "--timeout", "30", *args], environ)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run
