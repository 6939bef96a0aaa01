"""Start and stop what the bench measures: the simulator, the proxy (with its own simulator
child) and LiteLLM's proxy, each as a real process on loopback.

The proxy supervises its own ``ollama-sim serve`` on ``OLLAMA_INTERNAL_HOST``; the bench calls
that same child directly for the baseline ("direct"), so baseline and subject always share one
backend process. In A/A mode (``--self-check``) the "proxy" target is the simulator itself: every
ratio should then come out at 1 and every difference at 0, which checks the method.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from proxy.testing.net import free_port

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
    "http_get",
    "pull_models",
    "sim_command",
    "wait_http",
]

REPO = Path(__file__).resolve().parents[1]
CHAT_MODEL = "smollm2"
EMBED_MODEL = "all-minilm:l6-v2"
API_KEY = "bench-key-0123456789abcdef"
_POLL = 0.002
_STOP_GRACE = 10.0


class StackError(RuntimeError):
    """A process of the stack did not start, or died; the message holds its log tail."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where the load generator sends requests."""

    name: str
    url: str
    headers: dict[str, str]

    def as_job(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "headers": self.headers}


def sim_command() -> list[str]:
    """The ``ollama-sim`` executable of this environment."""
    script = Path(sys.executable).with_name("ollama-sim")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "proxy.testing.simulator"]


def http_get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """``GET url`` with the standard library; ``(0, b"")`` when nothing answers."""
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        conn.request("GET", "/" + path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError:
        return 0, b""
    finally:
        conn.close()


def http_post(url: str, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> bytes:
    """``POST url`` with a JSON body; returns the body.

    Raises:
        StackError: the answer is not 200.
    """
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=120)
    try:
        conn.request(
            "POST",
            "/" + path,
            json.dumps(body),
            {"Content-Type": "application/json", **(headers or {})},
        )
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise StackError(f"POST {url}: HTTP {resp.status}: {raw[:300]!r}")
    return raw


def wait_http(
    url: str,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    want: int = 200,
) -> float:
    """Poll ``url`` every 2 ms until it answers ``want``; return ``time.monotonic()`` then.

    Raises:
        StackError: ``proc`` exited first, or ``timeout`` passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        status, _ = http_get(url, timeout=1.0)
        now = time.monotonic()
        if status == want:
            return now
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{url}: process exited with {proc.returncode}{_tail(log)}")
        if now > deadline:
            raise StackError(f"{url}: no {want} within {timeout:g} s{_tail(log)}")
        time.sleep(_POLL)


def pull_models(base_url: str, models: list[str]) -> None:
    """``POST /api/pull`` each model (non-streamed) on an Ollama-compatible server."""
    for model in models:
        http_post(f"{base_url}/api/pull", {"model": model, "stream": False})


def _tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return "\n  log tail:\n    " + "\n    ".join(text)


def _spawn(cmd: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle: IO[bytes] = log.open("ab")
    try:
        return subprocess.Popen(
            cmd,
            env=dict(env),
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=REPO,
        )
    finally:
        handle.close()


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the process group, wait, then SIGKILL the group."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(_STOP_GRACE)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


class SimulatorStack:
    """A standalone ``ollama-sim serve`` with the bench models pulled.

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
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.models_dir = models_dir or workdir / f"{name}-models"
        self.log = workdir / f"{name}-{self.port}.log"
        self._env = {
            **os.environ,
            "OLLAMA_MODELS": str(self.models_dir),
            **(sim_env or {}),
            "OLLAMA_HOST": f"127.0.0.1:{self.port}",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self) -> None:
        self.spawned_at = time.monotonic()
        self.proc = _spawn([*sim_command(), "serve"], self._env, self.log)

    def start(self, pull: bool = True, timeout: float = 30.0) -> SimulatorStack:
        self.spawn()
        wait_http(f"{self.url}/api/version", timeout, self.proc, self.log)
        if pull:
            pull_models(self.url, [CHAT_MODEL, EMBED_MODEL])
        return self

    def target(self, name: str = "direct") -> Target:
        return Target(name, self.url, {})

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def __enter__(self) -> SimulatorStack:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


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
        self.aa = aa
        self._python_args = python_args
        self.workdir = workdir
        self.internal_port = free_port()
        self.port = free_port()
        self.models_dir = models_dir or workdir / f"{name}-models"
        self.log = workdir / f"{name}-{self.port}.log"
        self.direct_url = f"http://127.0.0.1:{self.internal_port}"
        self.proxy_url = f"http://127.0.0.1:{self.port}"
        self._sim: SimulatorStack | None = None
        self._sim_env = dict(sim_env or {})
        self.env = {
            **os.environ,
            **self._sim_env,
            "OLLAMA_BIN": str(Path(sys.executable).with_name("ollama-sim")),
            "OLLAMA_MODELS": str(self.models_dir),
            "OLLAMA_INTERNAL_HOST": f"127.0.0.1:{self.internal_port}",
            "OLLAMA_CHAT_MODELS": CHAT_MODEL,
            "OLLAMA_EMBEDDING_MODELS": EMBED_MODEL,
            "PROXY_HOST": "127.0.0.1",
            "PROXY_PORT": str(self.port),
            "PROXY_API_KEY": API_KEY,
            "PROXY_MAX_CONCURRENCY": "1024",
            "PROXY_MAX_QUEUE": "1024",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",
            **(extra_env or {}),
        }
        self.env.pop("OLLAMA_HOST", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0

    # ------------------------------------------------------------------ lifecycle

    def spawn(self) -> None:
        """Start the process(es) without waiting."""
        self.spawned_at = time.monotonic()
        if self.aa:
            self._sim = SimulatorStack(
                self.workdir, self._sim_env, models_dir=self.models_dir, name="aa-sim"
            )
            self._sim.spawn()
            self.direct_url = self.proxy_url = self._sim.url
            self.proc = self._sim.proc
            return
        cmd = [sys.executable, *self._python_args, "-m", "proxy", "serve"]
        self.proc = _spawn(cmd, self.env, self.log)

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Block until ``/readyz`` answers 200 (A/A: the simulator answers, models pulled)."""
        if self._sim is not None:
            at = wait_http(f"{self._sim.url}/api/version", timeout, self._sim.proc, self._sim.log)
            pull_models(self._sim.url, [CHAT_MODEL, EMBED_MODEL])
            return at
        return wait_http(f"{self.proxy_url}/readyz", timeout, self.proc, self.log)

    def start(self, timeout: float = 60.0) -> ProxyStack:
        self.spawn()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._sim is not None:
            self._sim.stop()
            self._sim = None
            self.proc = None
            return
        _stop(self.proc)
        self.proc = None

    def __enter__(self) -> ProxyStack:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ what to measure

    @property
    def proxy_pid(self) -> int:
        """The proxy's pid (A/A: the simulator's)."""
        assert self.proc is not None
        return self.proc.pid

    @property
    def backend_pid(self) -> int:
        """The pid of the simulator the proxy forwards to."""
        if self._sim is not None:
            return self._sim.pid
        for child in psutil.Process(self.proxy_pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if any("ollama-sim" in part or "simulator" in part for part in child.cmdline()):
                    return child.pid
        raise StackError("the proxy has no ollama-sim child")

    def direct(self, name: str = "direct") -> Target:
        return Target(name, self.direct_url, {})

    def proxy(self, name: str = "proxy") -> Target:
        return Target(name, self.proxy_url, {"Authorization": f"Bearer {API_KEY}"})


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


class LiteLLMStack:
    """LiteLLM's proxy in front of an Ollama-compatible backend (its OpenAI-compatible provider).

    The OpenAI-compatible provider (``openai/<model>`` with ``api_base=<backend>/v1``) is the
    cheapest path LiteLLM has to our simulator (no format conversion), which is the fair choice
    for a comparison of overhead. Telemetry, cost-map downloads and spend logging are off, and
    it runs one worker, as our proxy does.
    """

    def __init__(self, workdir: Path, backend_url: str, exe: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"litellm-{self.port}.log"
        self.config = workdir / f"litellm-{self.port}.yaml"
        self._exe = exe
        self._backend = backend_url
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> None:
        api_base = f"{self._backend}/v1"
        self.config.write_text(
            "model_list:\n"
            f"  - model_name: {CHAT_MODEL}\n"
            "    litellm_params:\n"
            f"      model: openai/{CHAT_MODEL}\n"
            f"      api_base: {api_base}\n"
            "      api_key: unused\n"
            f"  - model_name: {EMBED_MODEL}\n"
            "    litellm_params:\n"
            f"      model: openai/{EMBED_MODEL}\n"
            f"      api_base: {api_base}\n"
            "      api_key: unused\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
            "  drop_params: true\n"
            "  set_verbose: false\n"
            "general_settings:\n"
            f"  master_key: {LITELLM_KEY}\n"
            "  disable_spend_logs: true\n"
        )

    def start(self, timeout: float = 120.0) -> LiteLLMStack:
        self._write_config()
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
        cmd = [
            str(self._exe),
            "--config",
            str(self.config),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--num_workers",
            "1",
        ]
        self.proc = _spawn(cmd, env, self.log)
        try:
            wait_http(f"{self.url}/health/readiness", timeout, self.proc, self.log)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pids(self) -> list[int]:
        """The LiteLLM process and all its descendants (their CPU is all LiteLLM's)."""
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        return [root.pid, *(c.pid for c in root.children(recursive=True))]

    def target(self, name: str = "litellm") -> Target:
        return Target(name, self.url, {"Authorization": f"Bearer {LITELLM_KEY}"})

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def __enter__(self) -> LiteLLMStack:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
