"""The real_ollama suites' setup, on the shipped harness: ``python -m proxy serve`` is a
:class:`~proxy.testing.services.ProxyProcess` whose environment is the harness's
:func:`~proxy.testing.harness.proxy_env` with the real executable and models in place of the
simulator's.

The models directory of ``scripts/real-ollama.sh`` is a cache shared by every run: tests only
read it (Ollama started with ``OLLAMA_NOPRUNE=1``); a test that may pull, delete or copy works on
:func:`private_models`, a copy of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

from proxy.testing.harness import free_port, http_json, proxy_env
from proxy.testing.services import ProxyProcess, ServiceProcess

REPO = Path(__file__).resolve().parents[2]

CHAT_MODEL = "smollm2:135m"
EMBEDDING_MODEL = "all-minilm:l6-v2"
"""The tutorial's models, as ``scripts/real-ollama.sh`` creates them."""
PROMPT = "Why is the sky blue? Answer in one sentence."
"""The tutorial's question: short real answers from SmolLM2."""

API_KEY = "real-ollama-suite-key-0123456789"
"""The proxy's bearer key in these tests (16+ characters, as the proxy requires)."""

READY_TIMEOUT = 90.0
"""Real ``ollama serve`` started and both models loaded (a few seconds when the machine is idle)."""
EXIT_TIMEOUT = 30.0
"""SIGTERM to exit: the proxy drains, then stops Ollama and its runners."""
LEFTOVER_GRACE = 2.0
"""After the proxy exited, how long a dying descendant may take to be gone."""


@dataclass(frozen=True)
class RealOllama:
    """A real Ollama executable and a models directory holding both tutorial models."""

    bin: Path
    models: Path


def assert_real_text(text: str | None) -> None:
    """Non-empty text with at least one word of letters (not a placeholder or a blank)."""
    assert text, f"empty text: {text!r}"
    assert text.strip(), f"blank text: {text!r}"
    assert any(word.isalpha() for word in text.replace(",", " ").replace(".", " ").split()), text


def private_models(real: RealOllama, dest: Path) -> Path:
    """A models directory of the test's own with the same models: manifests copied, blobs
    hard-linked (copied where links cannot be made). Ollama writes a blob only under a new name
    and replaces it by renaming, so the shared files are never written through a link."""
    shutil.copytree(real.models / "manifests", dest / "manifests")
    (dest / "blobs").mkdir(parents=True)
    for blob in (real.models / "blobs").iterdir():
        try:
            os.link(blob, dest / "blobs" / blob.name)
        except OSError:
            shutil.copy2(blob, dest / "blobs" / blob.name)
    return dest


def snapshot(models: Path) -> dict[str, tuple[int, int]]:
    """Every file under a models directory: its size and modification time (ns)."""
    return {
        str(path.relative_to(models)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(models.rglob("*"))
        if path.is_file()
    }


def real_env(
    real: RealOllama, workdir: Path, *, models: Path | None = None, **overrides: str
) -> dict[str, str]:
    """:func:`proxy_env` for the real executable: its models (the shared cache unless
    ``models``), never pruned, an API key, one pull attempt; then ``overrides``."""
    env = proxy_env(
        workdir,
        OLLAMA_BIN=str(real.bin),
        OLLAMA_MODELS=str(models or real.models),
        OLLAMA_NOPRUNE="1",
        PROXY_API_KEY=API_KEY,
        OLLAMA_START_TIMEOUT="60",
        PULL_RETRIES="1",
        READY_TIMEOUT=str(READY_TIMEOUT),
        SHUTDOWN_GRACE="10",
    )
    env = {key: value for key, value in env.items() if not key.startswith("SIM_")}
    env.update(overrides)
    return env


def proxy(real: RealOllama, workdir: Path, **kwargs: Any) -> ProxyProcess:
    """A :class:`ProxyProcess` in front of the real executable (see :func:`real_env`), not yet
    started; its log is ``workdir/proxy.log``."""
    workdir.mkdir(parents=True, exist_ok=True)
    process = ProxyProcess(real_env(real, workdir, **kwargs), log_path=workdir / "proxy.log")
    process.ready_timeout = READY_TIMEOUT
    return process


@contextlib.contextmanager
def running(process: ProxyProcess) -> Iterator[ProxyProcess]:
    """Start ``process`` and stop it after, however the test ends."""
    process.start()
    try:
        yield process
    finally:
        process.stop()


def get(process: ProxyProcess, path: str) -> tuple[int, Any]:
    """``GET`` a path of the proxy with its API key: ``(status, JSON or text)``."""
    return http_json(process.url + path, headers=process.headers)


def ollama_server(real: RealOllama, models: Path, log_path: Path, **env: str) -> ServiceProcess:
    """``ollama serve`` itself on a free loopback port (not started), never pruning ``models``."""
    port = free_port()
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")},
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "OLLAMA_MODELS": str(models),
        "OLLAMA_NOPRUNE": "1",
        **env,
    }
    server = ServiceProcess(
        [str(real.bin), "serve"], env=environ, url=f"http://127.0.0.1:{port}", log_path=log_path
    )
    server.ready_timeout = READY_TIMEOUT
    return server


def descendants(pid: int) -> list[psutil.Process]:
    """Every live descendant of ``pid`` (``ollama serve``, its runners)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def terminate(process: ProxyProcess, timeout: float = EXIT_TIMEOUT) -> tuple[int, list[str]]:
    """SIGTERM the proxy; its exit status and the descendants still alive once it has exited.

    The descendants are collected before the signal and looked at again after the exit, up to
    :data:`LEFTOVER_GRACE` (a child that is already dying may take a moment to be reaped).
    Whatever is left is killed, so a failing test leaves nothing behind.
    """
    before = descendants(process.pid)
    process.send_signal(signal.SIGTERM)
    status = process.wait_exit(timeout)
    deadline = time.monotonic() + LEFTOVER_GRACE
    left = [proc for proc in before if _alive(proc)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [proc for proc in left if _alive(proc)]
    names = []
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            names.append(f"{proc.pid} {' '.join(proc.cmdline())}")
            proc.kill()
    return status, names


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""Prometheus samples by name and sorted labels (see :func:`metrics`)."""


def metrics(process: ProxyProcess, headers: Mapping[str, str] | None = None) -> Samples:
    """Every sample of the proxy's ``/metrics`` (asked with ``headers``, else its API key)."""
    status, text = http_json(process.url + "/metrics", headers=headers or process.headers)
    assert status == 200, text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(samples: Samples, name: str, **labels: str) -> float:
    """One sample of :func:`metrics`, 0 when it is absent (a series not yet seen)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def model_blob(models: Path, tag: str) -> str:
    """The file name of ``tag``'s weights in ``models`` (``sha256-...``), from its manifest."""
    name, _, version = tag.partition(":")
    manifest = (
        models / "manifests" / "registry.ollama.ai" / "library" / name / (version or "latest")
    )
    layers = json.loads(manifest.read_text())["layers"]
    digest = next(
        layer["digest"] for layer in layers if layer["mediaType"].endswith(".image.model")
    )
    return str(digest).replace(":", "-")


def kill_runner(process: ProxyProcess, tag: str) -> int:
    """SIGKILL the model runner of ``tag`` under the proxy's ``ollama serve`` (which lives on
    and starts a new runner for the next request); its pid.

    Raises:
        AssertionError: no runner of ``tag`` is running.
    """
    blob = model_blob(process.models_dir, tag)
    for child in descendants(process.pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            if any(arg.endswith(blob) for arg in child.cmdline()):
                child.kill()
                return child.pid
    raise AssertionError(f"no model runner of {tag} is running")
