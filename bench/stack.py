"""Start and stop what the bench measures: the simulator, the proxy (with its own simulator
child) and LiteLLM's proxy, each as a real process on loopback (:mod:`proxy.testing.harness`).

The proxy supervises its own ``ollama-sim serve`` on ``OLLAMA_INTERNAL_HOST``; the bench calls
that same child directly for the baseline ("direct"), so baseline and subject always share one
backend process. In A/A mode (``--self-check``) the "proxy" target is the simulator itself: every
ratio should then come out at 1 and every difference at 0, which checks the method.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import psutil

from proxy.testing.harness import HarnessError, free_port, http_json, proxy_env
from proxy.testing.services import ProxyProcess, ServiceProcess, SimulatorProcess

__all__ = [
    "API_KEY",
    "CHAT_MODEL",
    "EMBED_MODEL",
    "REPO",
    "LiteLLMStack",
    "ProxyStack",
    "SimulatorStack",
    "StackError",
    "Target",
    "http_post",
]

REPO = Path(__file__).resolve().parents[1]
CHAT_MODEL = "smollm2"
EMBED_MODEL = "all-minilm:l6-v2"
API_KEY = "bench-key-0123456789abcdef"

StackError = HarnessError
"""A process of the stack did not start, or died; the message holds its log tail."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where the load generator sends requests."""

    name: str
    url: str
    headers: dict[str, str]

    def as_job(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "headers": self.headers}


def http_post(url: str, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> Any:
    """``POST url`` with a JSON body; returns the answer.

    Raises:
        StackError: the answer is not 200.
    """
    status, answer = http_json(url, method="POST", body=body, headers=headers, timeout=120)
    if status != 200:
        raise StackError(f"POST {url}: HTTP {status}: {str(answer)[:300]}")
    return answer


def pull_models(base_url: str, models: list[str]) -> None:
    """``POST /api/pull`` each model (non-streamed) on an Ollama-compatible server."""
    for model in models:
        http_post(f"{base_url}/api/pull", {"model": model, "stream": False})


class SimulatorStack(SimulatorProcess):
    """A standalone ``ollama-sim serve``, with the bench models pulled by :meth:`start`.

    Args:
        workdir: where its log and (by default) its models go.
        sim_env: ``SIM_*`` knobs.
        models_dir: ``OLLAMA_MODELS`` (share it to start with models present).
    """

    def __init__(
        self,
        workdir: Path,
        sim_env: Mapping[str, str] | None = None,
        *,
        models_dir: Path | None = None,
        name: str = "sim",
    ) -> None:
        super().__init__(
            sim_env,
            models_dir=models_dir or workdir / f"{name}-models",
            log_path=workdir / f"{name}.log",
        )

    def start(self) -> Self:
        super().start()
        pull_models(self.url, [CHAT_MODEL, EMBED_MODEL])
        return self

    def target(self, name: str = "direct") -> Target:
        return Target(name, self.url, {})


class ProxyStack:
    """``python -m proxy serve`` supervising its own ``ollama-sim serve``.

    ``direct`` is the proxy's simulator child (same process the proxy forwards to); ``proxy`` is
    the proxy, with bearer auth on. ``aa=True`` runs only a simulator and makes both targets the
    simulator (A/A check of the method). ``python_args`` go between the interpreter and
    ``-m proxy serve`` (``("-m", "cProfile", "-o", path)`` profiles the proxy).
    """

    def __init__(
        self,
        workdir: Path,
        sim_env: Mapping[str, str] | None = None,
        *,
        models_dir: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
        aa: bool = False,
        name: str = "proxy",
        python_args: tuple[str, ...] = (),
    ) -> None:
        models_dir = models_dir or workdir / f"{name}-models"
        self.aa = aa
        self.process: ServiceProcess
        if aa:
            self.process = SimulatorStack(workdir, sim_env, models_dir=models_dir, name="aa-sim")
            self.direct_url = self.proxy_url = self.process.url
            self._headers: dict[str, str] = {}
            return
        env = proxy_env(
            workdir / name,
            **(sim_env or {}),
            OLLAMA_MODELS=str(models_dir),
            OLLAMA_CHAT_MODELS=CHAT_MODEL,
            OLLAMA_EMBEDDING_MODELS=EMBED_MODEL,
            PROXY_API_KEY=API_KEY,
            PROXY_MAX_CONCURRENCY="1024",
            PROXY_MAX_QUEUE="1024",
            **(extra_env or {}),
        )
        proxy = ProxyProcess(env, log_path=workdir / f"{name}.log", python_args=python_args)
        self.process = proxy
        self.direct_url, self.proxy_url = proxy.ollama_url, proxy.url
        self._headers = proxy.headers

    @property
    def env(self) -> dict[str, str]:
        """The environment the stack's process runs with."""
        return self.process.env

    @property
    def log(self) -> Path:
        return self.process.log_path

    @property
    def spawned_at(self) -> float:
        return self.process.spawned_at

    def spawn(self) -> None:
        """Start the process without waiting."""
        self.process.spawn()

    def check_running(self) -> None:
        """Raise :class:`StackError` if the process has exited."""
        self.process.check_running()

    def start(self) -> ProxyStack:
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> ProxyStack:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def proxy_pid(self) -> int:
        """The proxy's pid (A/A: the simulator's)."""
        return self.process.pid

    @property
    def backend_pid(self) -> int:
        """The pid of the simulator the proxy forwards to."""
        if isinstance(self.process, ProxyProcess):
            child = self.process.ollama()
            if child is None:
                raise StackError("the proxy has no ollama-sim child")
            return int(child.pid)
        return self.process.pid

    def direct(self, name: str = "direct") -> Target:
        return Target(name, self.direct_url, {})

    def proxy(self, name: str = "proxy") -> Target:
        return Target(name, self.proxy_url, self._headers)


# ---------------------------------------------------------------------- LiteLLM

LITELLM_DIR = Path(__file__).resolve().parent
LITELLM_VENV = LITELLM_DIR / ".venv-litellm"
LITELLM_REQUIREMENTS = LITELLM_DIR / "litellm.requirements.txt"
LITELLM_KEY = "sk-bench-litellm-0123456789"


def ensure_litellm(log: Path) -> Path:
    """The ``litellm`` executable of ``bench/.venv-litellm``, created on first use.

    Raises:
        StackError: uv is missing or the install failed (the message says where the log is).
    """
    exe = LITELLM_VENV / "bin" / "litellm"
    stamp = LITELLM_VENV / ".requirements"
    wanted = LITELLM_REQUIREMENTS.read_text()
    if exe.exists() and stamp.exists() and stamp.read_text() == wanted:
        return exe
    uv = shutil.which("uv")
    if uv is None:
        raise StackError("uv is not on PATH; cannot create bench/.venv-litellm")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        steps = [
            [uv, "venv", "--allow-existing", "--python", sys.executable, str(LITELLM_VENV)],
            [
                uv,
                "pip",
                "install",
                "--python",
                str(LITELLM_VENV / "bin" / "python"),
                "-r",
                str(LITELLM_REQUIREMENTS),
            ],
        ]
        for step in steps:
            done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                raise StackError(f"`{' '.join(step[:3])}` failed; see {log}")
    if not exe.exists():
        raise StackError(f"no litellm executable after the install; see {log}")
    stamp.write_text(wanted)
    return exe


class LiteLLMStack(ServiceProcess):
    """LiteLLM's proxy in front of an Ollama-compatible backend (its OpenAI-compatible provider).

    The OpenAI-compatible provider (``openai/<model>`` with ``api_base=<backend>/v1``) is the
    cheapest path LiteLLM has to our simulator (no format conversion), which is the fair choice
    for a comparison of overhead. Telemetry, cost-map downloads and spend logging are off, and
    it runs one worker, as our proxy does.
    """

    ready_timeout = 120.0

    def __init__(self, workdir: Path, backend_url: str, exe: Path) -> None:
        port = free_port()
        self.config = workdir / f"litellm-{port}.yaml"
        self._backend = backend_url
        env = {
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY": "False",
            "LITELLM_LOG": "ERROR",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        for key in ("DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
            env.pop(key, None)
        argv = [str(exe), "--config", str(self.config), "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--num_workers", "1"]
        super().__init__(
            argv,
            env=env,
            url=f"http://127.0.0.1:{port}",
            log_path=workdir / f"litellm-{port}.log",
            ready_path="/health/readiness",
        )

    def start(self) -> LiteLLMStack:
        api_base = f"{self._backend}/v1"
        models = "".join(
            f"  - model_name: {model}\n"
            "    litellm_params:\n"
            f"      model: openai/{model}\n"
            f"      api_base: {api_base}\n"
            "      api_key: unused\n"
            for model in (CHAT_MODEL, EMBED_MODEL)
        )
        self.config.write_text(
            "model_list:\n" + models + "litellm_settings:\n"
            "  telemetry: false\n"
            "  drop_params: true\n"
            "  set_verbose: false\n"
            "general_settings:\n"
            f"  master_key: {LITELLM_KEY}\n"
            "  disable_spend_logs: true\n"
        )
        super().start()
        return self

    @property
    def pids(self) -> list[int]:
        """The LiteLLM process and all its descendants (their CPU is all LiteLLM's)."""
        root = psutil.Process(self.pid)
        return [root.pid, *(c.pid for c in root.children(recursive=True))]

    def target(self, name: str = "litellm") -> Target:
        return Target(name, self.url, {"Authorization": f"Bearer {LITELLM_KEY}"})
