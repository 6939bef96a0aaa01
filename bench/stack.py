"""Start and stop what the bench measures: the simulator, the proxy (with its own simulator
child, or the real Ollama), nginx and LiteLLM's proxy, each as a real process on loopback
(:mod:`proxy.testing.harness`).

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
    "BareHopStack",
    "LiteLLMStack",
    "NginxStack",
    "ProxyStack",
    "RealOllama",
    "SimulatorStack",
    "StackError",
    "Target",
    "find_nginx",
    "find_uv",
    "http_post",
    "real_ollama",
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
        overrides = {
            **(sim_env or {}),
            "OLLAMA_MODELS": str(models_dir),
            "OLLAMA_CHAT_MODELS": CHAT_MODEL,
            "OLLAMA_EMBEDDING_MODELS": EMBED_MODEL,
            "PROXY_API_KEY": API_KEY,
            "PROXY_MAX_CONCURRENCY": "1024",
            "PROXY_MAX_QUEUE": "1024",
            **(extra_env or {}),  # may replace any of the above (OLLAMA_BIN too)
        }
        env = proxy_env(workdir / name, None, **overrides)
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


# ---------------------------------------------------------------------- real Ollama

REAL_OLLAMA_SCRIPT = REPO / "scripts" / "real-ollama.sh"
REAL_CHAT_MODEL = "smollm2:135m"
REAL_EMBED_MODEL = "all-minilm:l6-v2"
"""The tutorial's models as ``scripts/real-ollama.sh`` creates them."""


@dataclass(frozen=True, slots=True)
class RealOllama:
    """A real Ollama executable and the models directory holding the tutorial's models."""

    bin: Path
    models: Path

    def proxy_env(self) -> dict[str, str]:
        """``extra_env`` of a :class:`ProxyStack` in front of this Ollama and its models."""
        return {
            "OLLAMA_BIN": str(self.bin),
            "OLLAMA_MODELS": str(self.models),
            "OLLAMA_CHAT_MODELS": REAL_CHAT_MODEL,
            "OLLAMA_EMBEDDING_MODELS": REAL_EMBED_MODEL,
            # A shared cache: Ollama must not prune blobs in it at start.
            "OLLAMA_NOPRUNE": "1",
            "OLLAMA_START_TIMEOUT": "60",
            "PULL_RETRIES": "1",
        }


def real_ollama() -> RealOllama:
    """What ``scripts/real-ollama.sh --check`` finds cached (it builds nothing).

    Raises:
        StackError: nothing is cached; the message says how to build it.
    """
    try:
        done = subprocess.run(
            ["bash", str(REAL_OLLAMA_SCRIPT), "--check"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StackError(f"scripts/real-ollama.sh --check did not run: {exc}") from None
    values = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    if done.returncode != 0 or not {"OLLAMA_BIN", "OLLAMA_MODELS"} <= values.keys():
        raise StackError(
            "the real Ollama and its models are not cached: run scripts/real-ollama.sh once "
            "(about 10 minutes)"
        )
    return RealOllama(Path(values["OLLAMA_BIN"]), Path(values["OLLAMA_MODELS"]))


# ---------------------------------------------------------------------- nginx

NGINX_PATHS = (Path("/usr/sbin/nginx"), Path("/usr/local/sbin/nginx"))
"""Where Debian and source builds put nginx, often off a non-root user's PATH."""


def find_nginx() -> Path:
    """The ``nginx`` executable.

    Raises:
        StackError: not installed (the message says how to install it).
    """
    found = shutil.which("nginx")
    if found is not None:
        return Path(found)
    for path in NGINX_PATHS:
        if os.access(path, os.X_OK):
            return path
    raise StackError("nginx is not installed (Debian: apt-get install nginx)")


def nginx_version(exe: Path) -> str:
    """``nginx/1.22.1``, from ``nginx -v`` (which writes to stderr)."""
    done = subprocess.run([str(exe), "-v"], capture_output=True, text=True, check=False)
    words = (done.stderr + done.stdout).split()
    return next((w for w in words if w.startswith("nginx/")), "nginx")


_NGINX_CONF = """\
# The bench's floor anchor (bench/stack.py): nginx as a plain streaming reverse proxy, one worker.
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    upstream backend {{
        server {backend};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


class NginxStack(ServiceProcess):
    """nginx in front of an Ollama-compatible backend: the floor any reverse proxy pays.

    A plain streaming reverse proxy: ``proxy_buffering off`` (each piece relayed as it arrives),
    HTTP/1.1 with a keep-alive pool to the backend, an access log, no auth, one worker. Its
    prefix, configuration, pid file, logs and temporary paths all live in
    ``workdir/nginx-<port>``, so it runs as any user on a free loopback port (``-e`` keeps it
    from opening the system's error log before it reads the configuration).
    """

    ready_timeout = 15.0

    def __init__(self, workdir: Path, backend_url: str, exe: Path) -> None:
        port = free_port()
        self.root = workdir / f"nginx-{port}"
        self.config = self.root / "nginx.conf"
        self._backend = backend_url.removeprefix("http://").rstrip("/")
        self.version = nginx_version(exe)
        super().__init__(
            [
                str(exe),
                "-p",
                str(self.root),
                "-c",
                str(self.config),
                "-e",
                str(self.root / "error.log"),
            ],
            env=dict(os.environ),
            url=f"http://127.0.0.1:{port}",
            log_path=self.root / "nginx.out",
            ready_path="/",  # answered by the backend, through nginx
        )
        self._port = port

    def start(self) -> Self:
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            _NGINX_CONF.format(root=self.root, backend=self._backend, port=self._port)
        )
        return super().start()

    @property
    def pids(self) -> list[int]:
        """The master and its worker (their CPU is all nginx's)."""
        root = psutil.Process(self.pid)
        return [root.pid, *(c.pid for c in root.children(recursive=True))]

    def target(self, name: str = "nginx") -> Target:
        return Target(name, self.url, {})


class BareHopStack(ServiceProcess):
    """:mod:`bench.bare_hop` in front of an Ollama-compatible backend: the floor a reverse
    proxy built on aiohttp pays (the proxy's libraries and event loop, none of its features)."""

    def __init__(self, workdir: Path, backend_url: str) -> None:
        port = free_port()
        super().__init__(
            [sys.executable, "-m", "bench.bare_hop", str(port), backend_url],
            env=dict(os.environ),
            url=f"http://127.0.0.1:{port}",
            log_path=workdir / f"bare-hop-{port}.log",
            ready_path="/",  # answered by the backend, through the hop
            cwd=REPO,
        )

    def target(self, name: str = "aiohttp") -> Target:
        return Target(name, self.url, {})


# ---------------------------------------------------------------------- LiteLLM

LITELLM_DIR = Path(__file__).resolve().parent
LITELLM_VENV = LITELLM_DIR / ".venv-litellm"
LITELLM_REQUIREMENTS = LITELLM_DIR / "litellm.requirements.txt"
LITELLM_KEY = "sk-bench-litellm-0123456789"


BOOTSTRAP_UV = REPO / ".bootstrap" / "venv" / "bin" / "uv"
"""Where ``scripts/bootstrap.sh`` installs uv when neither PATH nor ``python3 -m uv`` has it."""


def find_uv() -> list[str]:
    """The command that runs uv, the first that answers ``--version`` of: ``$UV`` (set by
    ``uv run``), ``uv`` on PATH, ``-m uv`` of this interpreter or of ``$PYTHON``/``python3``,
    the private tools environment ``scripts/bootstrap.sh`` creates (``.bootstrap/venv``), and
    ``-m uv`` of the interpreter this virtual environment was made from. The same places
    bootstrap looks, so the bench needs no uv on PATH.

    Raises:
        StackError: none of them has uv.
    """
    candidates: list[list[str]] = []
    if uv_env := os.environ.get("UV"):
        candidates.append([uv_env])
    if on_path := shutil.which("uv"):
        candidates.append([on_path])
    for python in dict.fromkeys([sys.executable, os.environ.get("PYTHON") or "python3"]):
        candidates.append([python, "-m", "uv"])
    candidates.append([str(BOOTSTRAP_UV)])
    if base := _base_python():
        candidates.append([base, "-m", "uv"])
    for command in candidates:
        try:
            done = subprocess.run(
                [*command, "--version"], capture_output=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return command
    raise StackError("no uv found (not on PATH, nor as `python -m uv`): run scripts/bootstrap.sh")


def _base_python() -> str:
    """The ``python3`` of the interpreter this virtual environment was made from, or ''."""
    cfg = Path(sys.prefix) / "pyvenv.cfg"
    if sys.prefix == sys.base_prefix or not cfg.is_file():
        return ""
    for line in cfg.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home":
            return str(Path(value.strip()) / "python3")
    return ""


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
    uv = find_uv()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        steps = [
            [*uv, "venv", "--allow-existing", "--python", sys.executable, str(LITELLM_VENV)],
            [
                *uv,
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
                raise StackError(f"`uv {' '.join(step[len(uv) : len(uv) + 2])}` failed; see {log}")
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
