"""Models present on disk under ``OLLAMA_MODELS``, in Ollama's own layout.

A pulled model is a manifest at ``manifests/<host>/<namespace>/<model>/<tag>`` plus blobs at
``blobs/sha256-<hex>``. The weights blob is never written (it would be gigabytes); the config,
template, license and params blobs are. The config blob carries the simulator's spec, so a
restarted simulator pointed at the same directory finds the same models (a "baked" image).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .names import ModelName
from .registry import MEDIA_CONFIG, ModelSpec

__all__ = ["ModelStore", "StoredModel"]

_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
_MANIFEST_MEDIA = "application/vnd.docker.distribution.manifest.v2+json"


@dataclass(frozen=True, slots=True)
class StoredModel:
    """One model present in the store."""

    name: ModelName
    spec: ModelSpec
    digest: str
    size: int
    modified_at: float
    layers: tuple[str, ...]


class ModelStore:
    """The model directory; scanned once at start, then kept in memory and written through."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._models: dict[str, StoredModel] = {}
        for path in self._manifest_files():
            model = self._load(path)
            if model is not None:
                self._models[model.name.key] = model

    def get(self, name: ModelName) -> StoredModel | None:
        """The stored model called ``name``, if present."""
        return self._models.get(name.key)

    def all(self) -> list[StoredModel]:
        """Every present model, most recently modified first (as ``/api/tags`` lists them)."""
        return sorted(self._models.values(), key=lambda m: m.modified_at, reverse=True)

    def install(self, name: ModelName, spec: ModelSpec) -> StoredModel:
        """Write blobs and manifest for ``spec`` under ``name``."""
        layers = spec.layers()
        for layer in layers:
            if layer.content is not None:
                self.write_blob(layer.digest, layer.content)
        config = json.dumps(
            {
                "model_format": "gguf",
                "model_family": spec.family,
                "model_families": [spec.family],
                "model_type": spec.parameter_size,
                "file_type": spec.quantization,
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
                "simulator": spec.to_json(),
            }
        ).encode()
        config_digest = f"sha256:{hashlib.sha256(config).hexdigest()}"
        self.write_blob(config_digest, config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": _MANIFEST_MEDIA,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [
                {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
                for layer in layers
            ],
        }
        return self._write_manifest(name, json.dumps(manifest).encode())

    def copy(self, source: ModelName, destination: ModelName) -> StoredModel | None:
        """Duplicate ``source``'s manifest under ``destination``; ``None`` if absent."""
        if self.get(source) is None:
            return None
        return self._write_manifest(destination, source.manifest_path(self.root).read_bytes())

    def delete(self, name: ModelName) -> bool:
        """Remove ``name`` and any blob no other model uses; ``False`` if absent."""
        model = self._models.pop(name.key, None)
        if model is None:
            return False
        name.manifest_path(self.root).unlink(missing_ok=True)
        in_use = {digest for other in self._models.values() for digest in other.layers}
        for digest in set(model.layers) - in_use:
            path = self.blob_path(digest)
            if path is not None:
                path.unlink(missing_ok=True)
        return True

    def blob_path(self, digest: str) -> Path | None:
        """Path of blob ``sha256:<hex>``; ``None`` if the digest is malformed."""
        match = _DIGEST.match(digest)
        return None if match is None else self.root / "blobs" / f"sha256-{match.group(1)}"

    def write_blob(self, digest: str, content: bytes) -> None:
        """Store ``content`` as blob ``digest`` (atomically)."""
        path = self.blob_path(digest)
        if path is None:
            raise ValueError(f"invalid digest {digest!r}")
        if not path.exists():
            _atomic_write(path, content)

    def blob_count(self) -> int:
        """Number of blobs on disk."""
        blobs = self.root / "blobs"
        return sum(1 for _ in blobs.iterdir()) if blobs.is_dir() else 0

    def _write_manifest(self, name: ModelName, manifest: bytes) -> StoredModel:
        path = name.manifest_path(self.root)
        _atomic_write(path, manifest)
        model = self._load(path)
        if model is None:
            raise RuntimeError(f"manifest for {name.display} is unreadable after writing")
        self._models[name.key] = model
        return model

    def _manifest_files(self) -> Iterator[Path]:
        base = self.root / "manifests"
        if base.is_dir():
            yield from (p for p in base.glob("*/*/*/*") if p.is_file())

    def _load(self, path: Path) -> StoredModel | None:
        rel = path.relative_to(self.root / "manifests").parts
        name = ModelName.parse(f"{rel[0]}/{rel[1]}/{rel[2]}:{rel[3]}")
        try:
            raw = path.read_bytes()
            manifest = json.loads(raw)
            config_path = self.blob_path(manifest["config"]["digest"])
            if name is None or config_path is None:
                return None
            spec = ModelSpec.from_json(json.loads(config_path.read_bytes())["simulator"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        layers = (*(la["digest"] for la in manifest["layers"]), manifest["config"]["digest"])
        size = sum(la["size"] for la in manifest["layers"]) + manifest["config"]["size"]
        return StoredModel(
            name=name,
            spec=spec,
            digest=hashlib.sha256(raw).hexdigest(),
            size=size,
            modified_at=path.stat().st_mtime,
            layers=layers,
        )


def _atomic_write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(content)
        tmp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
