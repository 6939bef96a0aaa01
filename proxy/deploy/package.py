"""Local artefacts: the deployment package zip, the environment image and its identity.

The zip is reproducible (sorted entries, fixed timestamps and modes, no byte code), so the same
``deployment_package/`` always hashes the same and an unchanged package is not uploaded again.
An image archive (``docker save``, or ``podman save --format docker-archive``) is identified by
the image ID recorded in its ``manifest.json`` (the digest of the image configuration), so the
same image saved twice is recognised without hashing gigabytes.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

from proxy.deploy.errors import DeployError
from proxy.deploy.plan import ENGINES, BuildSpec

__all__ = ["PACKAGE_ROOT", "build_image", "choose_engine", "image_identity", "write_package_zip"]

PACKAGE_ROOT = "deployment_package"
"""The directory at the root of the zip; UbiOps picks the one with this name."""

_SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
_SKIPPED_SUFFIXES = {".pyc", ".pyo"}
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


def write_package_zip(package_dir: Path, destination: Path) -> str:
    """Zip ``package_dir`` as ``deployment_package/…`` into ``destination``; return its sha256.

    The image already holds the ``proxy`` package (installed from the lock by the Dockerfile), so
    the zip carries only the deployment code that UbiOps loads.

    Raises:
        DeployError: the directory or its ``deployment.py`` is missing.
    """
    if not (package_dir / "deployment.py").is_file():
        raise DeployError(f"{package_dir}/deployment.py not found: pass --package-dir")
    files = sorted(
        p
        for p in package_dir.rglob("*")
        if p.is_file()
        and p.suffix not in _SKIPPED_SUFFIXES
        and not _SKIPPED_DIRS.intersection(p.relative_to(package_dir).parts)
    )
    destination.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(destination, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            name = f"{PACKAGE_ROOT}/{path.relative_to(package_dir).as_posix()}"
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            info.external_attr = (0o100755 if path.stat().st_mode & 0o111 else 0o100644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return _sha256(destination)


def image_identity(archive: Path) -> str:
    """A stable hex identity of a docker archive: its image ID, else its sha256.

    Raises:
        DeployError: the file does not exist.
    """
    if not archive.is_file():
        raise DeployError(f"image archive {archive} not found")
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("manifest.json")
            manifest = json.load(member) if member else None
        config = str(manifest[0]["Config"]) if manifest else ""
        found = _HEX64.search(config)
        if found:
            return found.group(0)
    except (tarfile.TarError, KeyError, IndexError, TypeError, ValueError, OSError):
        pass
    return _sha256(archive)


def build_image(spec: BuildSpec) -> Path:
    """Build ``spec`` with docker or podman and save it as a docker archive; return its path.

    The engine is ``spec.engine``, or with ``auto`` the first usable of docker (installed, its
    daemon answering) and podman (installed). Their output goes straight to the terminal.

    Raises:
        DeployError: no usable engine, the CA bundle is missing, or a command failed.
    """
    engine, executable = choose_engine(spec.engine)
    if spec.ca_bundle is not None and not spec.ca_bundle.is_file():
        raise DeployError(f"--ca-bundle {spec.ca_bundle}: no such file")
    spec.output.parent.mkdir(parents=True, exist_ok=True)
    for command in (spec.build_command(engine), spec.save_command(engine)):
        print("$ " + " ".join(command), flush=True)
        if subprocess.run([executable, *command[1:]], check=False).returncode != 0:
            raise DeployError(f"`{' '.join(command[:2])}` failed (see its output above)")
    return spec.output


def choose_engine(wanted: str = "auto") -> tuple[str, str]:
    """The engine ``--build`` uses and its executable: ``wanted``, or the first usable of
    :data:`ENGINES` for ``auto`` (docker needs its daemon; podman has none).

    Raises:
        DeployError: none is usable; the message says what was found and what to do.
    """
    candidates = ENGINES if wanted == "auto" else (wanted,)
    problems = []
    for name in candidates:
        executable = shutil.which(name)
        if executable is None:
            problems.append(f"{name} is not installed")
            continue
        if name == "docker":
            probe = subprocess.run(
                [executable, "info", "--format", "{{.ServerVersion}}"],
                capture_output=True,
                text=True,
                check=False,
            )
            if probe.returncode != 0:
                reason = (probe.stderr.strip().splitlines() or ["no answer"])[-1]
                problems.append(f"docker is installed but its daemon does not answer ({reason})")
                continue
        if problems:
            print(f"building with {name}: {'; '.join(problems)}", flush=True)
        return name, executable
    wants = "docker (with a running daemon) or podman" if wanted == "auto" else wanted
    raise DeployError(
        f"--build needs {wants}: {'; '.join(problems)}. Install or start one, or build the image "
        "elsewhere and pass the archive with --image"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
