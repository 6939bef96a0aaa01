"""The running simulator's state: settings, models on disk, what is loaded, fault counters.

One :class:`Simulator` is built per process and reached from handlers through ``SIMULATOR``.
Its :class:`ModelStore` keeps pulled models in Ollama's own layout under ``OLLAMA_MODELS``: a
manifest at ``manifests/<host>/<namespace>/<model>/<tag>`` plus blobs at ``blobs/sha256-<hex>``.
The weights blob is never written (it would be gigabytes); the config, template, license and
params blobs are. The config blob carries the simulator's spec, so a restarted simulator pointed
at the same directory finds the same models (a "baked" image). Its :class:`Scheduler` stands in
for Ollama's (which models are "loaded", and until when); its :class:`Counters` decide which
requests fail and keep ``SIM_STATE_DIR`` (see :mod:`~proxy.testing.simulator.config`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from .config import EXTRA_MODELS, Faults, PullFailureMode, ServerConfig
from .models import ModelName, ModelSpec, Registry
from .wire import log

__all__ = [
    "SIMULATOR",
    "Counters",
    "Loaded",
    "ModelStore",
    "Scheduler",
    "Simulator",
    "StoredModel",
    "read_pull_log",
]

_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
_MEDIA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"
_PULL_LOG = "pulls.log"
_PULL_FAILURES = "pull_failures"
_CRASHED = "crashed"


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
        base = root / "manifests"
        paths = (p for p in base.glob("*/*/*/*") if p.is_file()) if base.is_dir() else ()
        for path in paths:
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
                self._write_blob(layer.digest, layer.content)
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
        self._write_blob(config_digest, config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": _MEDIA_MANIFEST,
            "config": {"mediaType": _MEDIA_CONFIG, "digest": config_digest, "size": len(config)},
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
            path = self._blob_path(digest)
            if path is not None:
                path.unlink(missing_ok=True)
        return True

    def _blob_path(self, digest: str) -> Path | None:
        match = _DIGEST.match(digest)
        return None if match is None else self.root / "blobs" / f"sha256-{match.group(1)}"

    def _write_blob(self, digest: str, content: bytes) -> None:
        path = self._blob_path(digest)
        if path is None:
            raise ValueError(f"invalid digest {digest!r}")
        if not path.exists():
            _atomic_write(path, content)

    def _write_manifest(self, name: ModelName, manifest: bytes) -> StoredModel:
        path = name.manifest_path(self.root)
        _atomic_write(path, manifest)
        model = self._load(path)
        if model is None:
            raise RuntimeError(f"manifest for {name.display} is unreadable after writing")
        self._models[name.key] = model
        return model

    def _load(self, path: Path) -> StoredModel | None:
        rel = path.relative_to(self.root / "manifests").parts
        name = ModelName.parse(f"{rel[0]}/{rel[1]}/{rel[2]}:{rel[3]}")
        try:
            raw = path.read_bytes()
            manifest = json.loads(raw)
            config_path = self._blob_path(manifest["config"]["digest"])
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


@dataclass(slots=True)
class Loaded:
    """A loaded model; ``expires_at`` is a Unix time (``inf`` = forever)."""

    model: StoredModel
    expires_at: float
    in_use: int = 0


class Scheduler:
    """Loads models on first use (taking ``load_delay``) and expires them after keep-alive."""

    def __init__(self, default_keep_alive: float, load_delay: float) -> None:
        self._default = default_keep_alive
        self._load_delay = load_delay
        self._loaded: dict[str, Loaded] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def acquire(self, model: StoredModel, keep_alive: float | None) -> int:
        """Mark ``model`` in use, loading it if needed; returns the load time in nanoseconds."""
        start = time.perf_counter_ns()
        key = model.name.key
        entry = self._current(key)
        if entry is None:
            async with self._locks.setdefault(key, asyncio.Lock()):
                entry = self._current(key)
                if entry is None:
                    if self._load_delay > 0:
                        await asyncio.sleep(self._load_delay)
                    entry = self._loaded[key] = Loaded(model, time.time())
        entry.in_use += 1
        entry.expires_at = time.time() + self._keep_alive(keep_alive)
        return max(time.perf_counter_ns() - start, 1)

    def release(self, model: StoredModel, keep_alive: float | None) -> None:
        """End one use of ``model``; the keep-alive clock starts now (0 unloads once idle)."""
        key = model.name.key
        entry = self._loaded.get(key)
        if entry is None:
            return
        entry.in_use = max(entry.in_use - 1, 0)
        seconds = self._keep_alive(keep_alive)
        entry.expires_at = time.time() + seconds
        if seconds <= 0 and entry.in_use == 0:
            del self._loaded[key]

    def unload(self, model: StoredModel) -> None:
        """Drop ``model`` now (``keep_alive: 0`` with an empty prompt, or a delete)."""
        self._loaded.pop(model.name.key, None)

    def running(self) -> list[Loaded]:
        """Loaded models, longest remaining keep-alive first (as ``/api/ps`` lists them)."""
        for key in list(self._loaded):
            self._current(key)
        return sorted(self._loaded.values(), key=lambda e: e.expires_at, reverse=True)

    def _current(self, key: str) -> Loaded | None:
        entry = self._loaded.get(key)
        if entry is not None and entry.in_use == 0 and entry.expires_at <= time.time():
            del self._loaded[key]
            return None
        return entry

    def _keep_alive(self, requested: float | None) -> float:
        return self._default if requested is None else requested


class Counters:
    """Decides which requests fail, and records pull outcomes (in ``SIM_STATE_DIR`` if set)."""

    def __init__(self, faults: Faults) -> None:
        self._faults = faults
        self._dir = faults.state_dir
        self._inference = 0
        self._pull_failures = 0
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
            try:
                self._pull_failures = int((self._dir / _PULL_FAILURES).read_text().strip() or 0)
            except (OSError, ValueError):
                self._pull_failures = 0

    def begin_inference(self) -> bool:
        """Count one inference request; ``True`` if this one must crash the process."""
        self._inference += 1
        limit = self._faults.crash_after
        if limit is None or self._inference != limit + 1:
            return False
        if self._dir is not None:
            marker = self._dir / _CRASHED
            if marker.exists():
                return False
            marker.write_text(f"{os.getpid()}\n")
        return True

    def take_pull_failure(self) -> PullFailureMode | None:
        """Count one pull request; the failure mode if this one must fail."""
        if self._pull_failures >= self._faults.pull_failures:
            return None
        self._pull_failures += 1
        if self._dir is not None:
            (self._dir / _PULL_FAILURES).write_text(f"{self._pull_failures}\n")
        return self._faults.pull_failure_mode

    def record_pull(self, model: str, reason: str | None, downloaded: bool) -> None:
        """Append one line to ``pulls.log`` (only when ``SIM_STATE_DIR`` is set)."""
        if self._dir is None:
            return
        line = {
            "time": time.time(),
            "pid": os.getpid(),
            "model": model,
            "outcome": "success" if reason is None else "failed",
            "reason": reason,
            "downloaded": downloaded,
        }
        with (self._dir / _PULL_LOG).open("a", encoding="utf-8") as pulls:
            pulls.write(json.dumps(line) + "\n")


def read_pull_log(state_dir: Path) -> list[dict[str, Any]]:
    """Every record in ``<state_dir>/pulls.log``, oldest first (empty if there is none)."""
    path = state_dir / _PULL_LOG
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@dataclass(slots=True)
class Simulator:
    """Everything a request handler needs; built once per process."""

    config: ServerConfig
    faults: Faults
    registry: Registry
    store: ModelStore
    scheduler: Scheduler
    counters: Counters
    allow_exit: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Simulator:
        """Build from ``OLLAMA_*`` and ``SIM_*`` variables.

        Raises:
            ValueError: a variable is malformed; the message names it.
        """
        config = ServerConfig.from_env(environ)
        faults = Faults.from_env(environ)
        return cls(
            config=config,
            faults=faults,
            registry=Registry(environ.get(EXTRA_MODELS.name, "")),
            store=ModelStore(config.models_dir),
            scheduler=Scheduler(config.keep_alive, faults.load_delay),
            counters=Counters(faults),
        )

    def find(self, raw: str) -> StoredModel | None:
        """The stored model named ``raw`` (any spelling), if present."""
        name = ModelName.parse(raw)
        return None if name is None else self.store.get(name)

    def crash(self) -> None:
        """Die abruptly with status 1, as a crashed ``ollama serve`` would (``SIM_CRASH_AFTER``)."""
        if not self.allow_exit:
            raise RuntimeError(
                "simulated crash requested (SIM_CRASH_AFTER) in an in-process server"
            )
        log("ERROR", "server.go:1", "simulated crash", fault="SIM_CRASH_AFTER")
        sys.stderr.write("panic: simulated runner crash (SIM_CRASH_AFTER)\n")
        sys.stderr.flush()
        os._exit(1)


SIMULATOR = web.AppKey("simulator", Simulator)
"""Where handlers find the :class:`Simulator` on the application."""
