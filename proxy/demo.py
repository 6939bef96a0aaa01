"""Demo: the deployment package in an emulated 3-process UbiOps instance, end to end.

Run python -m proxy.demo (or scripts/run-local.sh). The Ollama it runs is the first of:

  1. OLLAMA_BIN, when set;
  2. the real Ollama v0.24.0 and the tutorial's models (SmolLM2 135M, all-MiniLM-L6-v2)
     that scripts/real-ollama.sh builds and caches, when its --check finds them;
  3. an ollama on PATH (it pulls the models it lacks on the first run);
  4. the bundled simulator (ollama-sim) with a temporary model store: its answers are
     placeholder words, not a model's.

Then it streams a chat answer through request(), printing each chunk as streaming_update
delivers it; asks for an embedding through request(); and does both again with the openai
client, straight through the proxy's port. Every answer line is labelled with the backend that
produced it. It exits 0 when everything worked and 1 with one line saying what failed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from proxy.testing.harness import free_port, http_json
from proxy.testing.ubiops_instance import InstanceError, UbiOpsInstance

__all__ = ["DEFAULT_CHAT_MODEL", "DEFAULT_EMBEDDING_MODEL", "Backend", "main"]

DEFAULT_CHAT_MODEL = "smollm2:135m"
DEFAULT_EMBEDDING_MODEL = "all-minilm:l6-v2"
PROCESSES = 3
QUESTION = "Why is the sky blue? Answer in one sentence."
MAX_TOKENS = 64
"""A cap on each answer: a small real model may ramble on for minutes on a busy CPU."""
START_MARGIN = 60.0
REQUEST_TIMEOUT = 600.0
CHECK_TIMEOUT = 30.0
"""``scripts/real-ollama.sh --check`` only looks at files."""
SIM_PACE = "0.05"
"""The simulator's pace in the demo (seconds per word): slow enough to see the streaming."""

REPO = Path(__file__).resolve().parents[1]
REAL_OLLAMA_SCRIPT = REPO / "scripts" / "real-ollama.sh"
INSTALL_HINT = "for real answers, run scripts/real-ollama.sh once (about 10 minutes)"


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Backend:
    """The Ollama executable the demo runs and where its models are.

    Attributes:
        bin: ``OLLAMA_BIN``.
        simulated: whether it is the simulator (its answers are placeholders).
        models: ``OLLAMA_MODELS`` to use, or None for the executable's own default.
        how: one line saying which backend this is and why it was chosen.
        log_level: the demo's ``LOG_LEVEL`` unless one is set.
    """

    bin: str
    simulated: bool
    models: str | None
    how: str
    log_level: str

    def label(self, kind: str, model: str, version: str) -> str:
        """What produced an answer of ``kind`` (``chat`` or ``embedding``)."""
        if self.simulated:
            what = "words" if kind == "chat" else "vector"
            return f"simulator: placeholder {what}, not a model"
        return f"real Ollama {version} with {model}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m proxy.demo",
        description=__doc__,
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--package-dir",
        type=Path,
        default=_default_package_dir(),
        help="the deployment package directory (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        with _demo_env(os.environ) as (env, backend):
            _run(args.package_dir, env, backend)
    except (DemoError, InstanceError, OSError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("demo interrupted", file=sys.stderr, flush=True)
        return 130
    print("demo finished: everything stopped cleanly", flush=True)
    return 0


def _epilog() -> str:
    return (
        "environment (each also passed to the proxy):\n"
        "  OLLAMA_CHAT_MODELS       chat models, the first is asked "
        f"(default {DEFAULT_CHAT_MODEL})\n"
        "  OLLAMA_EMBEDDING_MODELS  embedding models, the first is asked "
        f"(default {DEFAULT_EMBEDDING_MODEL})\n"
        "  OLLAMA_BIN               the Ollama executable (default: the first found, above)\n"
        "  OLLAMA_MODELS            its model store (default: real-ollama.sh's cache; the\n"
        "                           simulator: a temporary directory; an ollama on PATH: its own)\n"
        "  LOG_LEVEL                the proxy's and Ollama's log lines shown (default: error\n"
        "                           with the cached real Ollama, warning with the simulator,\n"
        "                           info with an ollama on PATH, which may pull models;\n"
        "                           warning with OLLAMA_BIN)\n"
        f"  SIM_TOKEN_DELAY          the simulator's seconds per word (default {SIM_PACE})\n"
        "  PROXY_PORT, OLLAMA_INTERNAL_HOST  default: free loopback ports\n"
        "  PROXY_API_KEY            default: a random key for this run"
    )


def _run(package_dir: Path, env: dict[str, str], backend: Backend) -> None:
    chat_model = env["OLLAMA_CHAT_MODELS"].split(",")[0].strip()
    embedding_model = env["OLLAMA_EMBEDDING_MODELS"].split(",")[0].strip()
    ready_timeout = float(env.get("READY_TIMEOUT") or 1800)
    _say(
        f"starting an emulated UbiOps instance: {PROCESSES} request processes, "
        f"chat model {chat_model}, embedding model {embedding_model}"
    )
    started = time.monotonic()
    with UbiOpsInstance(package_dir, processes=PROCESSES, env=env) as instance:
        instance.wait_started(timeout=ready_timeout + START_MARGIN)
        version = _backend_version(env)
        _say(f"all {PROCESSES} processes ready after {time.monotonic() - started:.1f} s")
        chat_label = backend.label("chat", chat_model, version)
        vector_label = backend.label("embedding", embedding_model, version)

        _say(f"1. streamed chat through request() with {chat_model}: {QUESTION}")
        request = {
            "model": chat_model,
            "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": MAX_TOKENS,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        answer = _Answer(chat_label)
        result = instance.request(
            json.dumps(request),
            timeout=REQUEST_TIMEOUT,
            on_update=lambda _t, text: answer.write(_chunk_text(text)),
        )
        answer.end()
        if result.error is not None:
            raise DemoError(f"the streamed chat request failed: {result.error}")
        first, last = result.updates[0][0], result.updates[-1][0]
        _say(
            f"   {len(result.updates)} chunks via streaming_update over {last - first:.2f} s "
            f"(process {result.process_id})"
        )

        _say(f"2. embedding through request() with {embedding_model}")
        result = instance.request(
            json.dumps({"model": embedding_model, "input": "UbiOps runs Ollama"}),
            timeout=REQUEST_TIMEOUT,
        )
        if result.error is not None:
            raise DemoError(f"the embedding request failed: {result.error}")
        vector = json.loads(result.output)["data"][0]["embedding"]
        _say(f"   [{vector_label}] {_describe_vector(vector)}")

        _say("3. the same through the proxy's port with the openai client")
        _openai_round(env, chat_model, embedding_model, chat_label, vector_label)
        _say("stopping the instance")


def _openai_round(
    env: Mapping[str, str],
    chat_model: str,
    embedding_model: str,
    chat_label: str,
    vector_label: str,
) -> None:
    import openai

    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{env['PROXY_PORT']}/v1",
        api_key=env.get("PROXY_API_KEY") or "unused",
        max_retries=0,
        timeout=REQUEST_TIMEOUT,
    )
    try:
        stream = client.chat.completions.create(
            model=chat_model,
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=MAX_TOKENS,
            stream=True,
        )
        answer = _Answer(chat_label)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                answer.write(chunk.choices[0].delta.content)
        answer.end()
        embedding = client.embeddings.create(model=embedding_model, input="UbiOps runs Ollama")
        _say(f"   [{vector_label}] {_describe_vector(embedding.data[0].embedding)}")
    except openai.OpenAIError as exc:
        raise DemoError(f"the openai client request failed: {exc}") from None
    finally:
        client.close()


@contextmanager
def _demo_env(environ: Mapping[str, str]) -> Iterator[tuple[dict[str, str], Backend]]:
    """The instance's environment (Ollama or the simulator, free ports, a random API key) and
    the backend it runs."""
    env = dict(environ)
    env.setdefault("OLLAMA_CHAT_MODELS", DEFAULT_CHAT_MODEL)
    env.setdefault("OLLAMA_EMBEDDING_MODELS", DEFAULT_EMBEDDING_MODEL)
    env.setdefault("PROXY_PORT", str(free_port()))
    env.setdefault("OLLAMA_INTERNAL_HOST", f"127.0.0.1:{free_port()}")
    env.setdefault("PROXY_HOST", "127.0.0.1")
    env.setdefault("PROXY_API_KEY", secrets.token_urlsafe(24))
    env.setdefault("LOG_FORMAT", "console")
    with tempfile.TemporaryDirectory(prefix="ollama-demo-") as store:
        backend = _choose_backend(env, store)
        _say(backend.how)
        env["OLLAMA_BIN"] = backend.bin
        env.setdefault("LOG_LEVEL", backend.log_level)
        if backend.models is not None:
            env.setdefault("OLLAMA_MODELS", backend.models)
        if backend.simulated:
            env.setdefault("SIM_TOKEN_DELAY", SIM_PACE)  # visible chunk-by-chunk streaming
        else:
            # The models directory may be a shared cache: Ollama must not prune blobs in it.
            env.setdefault("OLLAMA_NOPRUNE", "1")
        yield env, backend


def _choose_backend(env: Mapping[str, str], store: str) -> Backend:
    """The first of: OLLAMA_BIN, the cached real Ollama, an ``ollama`` on PATH, the simulator."""
    if given := env.get("OLLAMA_BIN"):
        simulated = Path(given).name.startswith("ollama-sim")
        return Backend(given, simulated, None, f"using OLLAMA_BIN={given}", "warning")
    if cached := _cached_real_ollama():
        bin_, models = cached
        how = f"using the real Ollama cached by scripts/real-ollama.sh: {bin_}, models in {models}"
        return Backend(bin_, False, models, how, "error")
    if on_path := shutil.which("ollama"):
        how = (
            f"using the ollama on PATH at {on_path}; it pulls the models it lacks on the first run "
            "(or run scripts/real-ollama.sh to create them offline)"
        )
        return Backend(on_path, False, None, how, "info")
    how = f"no real Ollama installed: the simulator answers, with placeholder words; {INSTALL_HINT}"
    return Backend(_simulator(), True, store, how, "warning")


def _cached_real_ollama() -> tuple[str, str] | None:
    """``(OLLAMA_BIN, OLLAMA_MODELS)`` when ``scripts/real-ollama.sh --check`` finds both."""
    if not REAL_OLLAMA_SCRIPT.is_file():  # installed without the repository's scripts
        return None
    try:
        done = subprocess.run(
            ["bash", str(REAL_OLLAMA_SCRIPT), "--check"],
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    values = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    if done.returncode != 0 or not {"OLLAMA_BIN", "OLLAMA_MODELS"} <= values.keys():
        return None
    return values["OLLAMA_BIN"], values["OLLAMA_MODELS"]


def _backend_version(env: Mapping[str, str]) -> str:
    """The version the running Ollama reports, through the proxy."""
    status, body = http_json(
        f"http://127.0.0.1:{env['PROXY_PORT']}/api/version",
        headers={"Authorization": f"Bearer {env['PROXY_API_KEY']}"},
    )
    version = body.get("version") if status == 200 and isinstance(body, dict) else None
    if isinstance(version, str):
        return version
    return "(version unknown)"


def _simulator() -> str:
    found = shutil.which("ollama-sim") or str(Path(sys.executable).with_name("ollama-sim"))
    if not Path(found).is_file():
        raise DemoError(f"neither a real Ollama nor the simulator is installed; {INSTALL_HINT}")
    return found


def _default_package_dir() -> Path:
    beside_package = REPO / "deployment_package"
    return beside_package if beside_package.is_dir() else Path.cwd() / "deployment_package"


class _Answer:
    """Prints streamed text, starting every line with the label of the backend that wrote it."""

    def __init__(self, label: str) -> None:
        self._prefix = f"   [{label}] "
        self._at_line_start = True

    def write(self, text: str) -> None:
        while text:
            line, newline, text = text.partition("\n")
            if self._at_line_start:
                print(self._prefix, end="")
            print(line + newline, end="", flush=True)
            self._at_line_start = bool(newline)

    def end(self) -> None:
        """Finish the answer's last line."""
        if not self._at_line_start:
            print(flush=True)
        self._at_line_start = True


def _chunk_text(text: str) -> str:
    # The demo is the client here: parsing the chunk to print its text is its own business.
    chunk = json.loads(text)
    if chunk.get("choices"):
        return str(chunk["choices"][0].get("delta", {}).get("content") or "")
    return ""


def _describe_vector(vector: list[float]) -> str:
    return f"dimension {len(vector)}, first values {[round(v, 4) for v in vector[:4]]}"


def _say(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
