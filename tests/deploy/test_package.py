"""The deployment package zip and the identity of an image archive."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from proxy.deploy.errors import DeployError
from proxy.deploy.package import image_identity, write_package_zip

from .conftest import IMAGE_ID, make_image


def test_the_zip_has_deployment_package_at_its_root_without_byte_code(
    package_dir: Path, tmp_path: Path
) -> None:
    (package_dir / "libraries").mkdir()
    (package_dir / "libraries" / "helper.py").write_text("X = 1\n")

    write_package_zip(package_dir, tmp_path / "p.zip")

    with zipfile.ZipFile(tmp_path / "p.zip") as archive:
        assert archive.namelist() == [
            "deployment_package/deployment.py",
            "deployment_package/libraries/helper.py",
            "deployment_package/requirements.txt",
        ]


def test_the_zip_is_reproducible(package_dir: Path, tmp_path: Path) -> None:
    first = write_package_zip(package_dir, tmp_path / "a.zip")
    os.utime(package_dir / "deployment.py", (1_000_000_000, 1_000_000_000))
    second = write_package_zip(package_dir, tmp_path / "b.zip")

    assert first == second == hashlib.sha256((tmp_path / "a.zip").read_bytes()).hexdigest()
    (package_dir / "deployment.py").write_text("changed = True\n")
    assert write_package_zip(package_dir, tmp_path / "c.zip") != first


def test_a_package_without_deployment_py_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match=r"deployment\.py not found"):
        write_package_zip(tmp_path, tmp_path / "p.zip")


def test_an_image_is_identified_by_its_image_id(tmp_path: Path) -> None:
    assert image_identity(make_image(tmp_path / "a.tar")) == IMAGE_ID


def test_an_archive_without_a_manifest_is_identified_by_its_hash(tmp_path: Path) -> None:
    blob = tmp_path / "blob.tar"
    blob.write_bytes(b"not a tar at all")

    assert image_identity(blob) == hashlib.sha256(b"not a tar at all").hexdigest()
    with pytest.raises(DeployError, match="not found"):
        image_identity(tmp_path / "missing.tar")
