"""Demo: the deployment package in an emulated 3-process UbiOps instance, end to end.

Run ``python -m proxy.demo``. It uses the real ``ollama`` when it is on PATH (or when
OLLAMA_BIN is set), otherwise the bundled simulator (``ollama-sim``) with a temporary model store,
and then:

1. streams a chat answer through ``request()`` and prints each chunk as ``streaming_update``
   delivers it;
2. asks for an embedding through ``request()``;
3. does both again with the real ``openai`` client, straight through the proxy's port.

It exits 0 when everything worked and non-zero with one line saying what failed.
Models come from OLLAMA_CHAT_MODELS and OLLAMA_EMBEDDING_MODELS (defaults below).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from proxy.testing.harness import free_port
from proxy.testing.ubiops_instance import InstanceError, UbiOpsInstance

__all__ = ["DEFAULT_CHAT_MODEL", "DEFAULT_EMBEDDING_MODEL", "main"]

DEFAULT_CHAT_MODEL = "smollm2:135m"
DEFAULT_EMBEDDING_MODEL = "all-minilm:l6-v2"
PROCESSES = 3
QUESTION = "Why is the sky blue? Answer in one sentence."
START_MARGIN = 60.0
REQUEST_TIMEOUT = 600.0


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxy.demo", description=__doc__)
    parser.add_argument(
        "--package-dir",
        type=Path,
        default=_default_package_dir(),
        help="the deployment package directory (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        with _demo_env(os.environ) as env:
            _run(args.package_dir, env)
    except (DemoError, InstanceError, OSError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("demo interrupted", file=sys.stderr, flush=True)
        return 130
    print("demo finished: everything stopped cleanly", flush=True)
    return 0


def _run(package_dir: Path, env: dict[str, str]) -> None:
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
        _say(f"all {PROCESSES} processes ready after {time.monotonic() - started:.1f} s")

        _say(f"1. streamed chat through request() with {chat_model}: {QUESTION}")
        request = {
            "model": chat_model,
            "messages": [{"role": "user", "content": QUESTION}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        result = instance.request(
            json.dumps(request), timeout=REQUEST_TIMEOUT, on_update=_print_token
        )
        print(flush=True)
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
        _say(f"   {_describe_vector(json.loads(result.output)['data'][0]['embedding'])}")

        _say("3. the same through the proxy's port with the openai client")
        _openai_round(env, chat_model, embedding_model)
        _say("stopping the instance")


def _openai_round(env: Mapping[str, str], chat_model: str, embedding_model: str) -> None:
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
            stream=True,
        )
        print("   ", end="", flush=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
        print(flush=True)
        embedding = client.embeddings.create(model=embedding_model, input="UbiOps runs Ollama")
        _say(f"   {_describe_vector(embedding.data[0].embedding)}")
    except openai.OpenAIError as exc:
        raise DemoError(f"the openai client request failed: {exc}") from None
    finally:
        client.close()


@contextmanager
def _demo_env(environ: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """The instance's environment: Ollama or the simulator, free ports, a random API key."""
    env = dict(environ)
    env.setdefault("OLLAMA_CHAT_MODELS", DEFAULT_CHAT_MODEL)
    env.setdefault("OLLAMA_EMBEDDING_MODELS", DEFAULT_EMBEDDING_MODEL)
    env.setdefault("PROXY_PORT", str(free_port()))
    env.setdefault("OLLAMA_INTERNAL_HOST", f"127.0.0.1:{free_port()}")
    env.setdefault("PROXY_HOST", "127.0.0.1")
    env.setdefault("PROXY_API_KEY", secrets.token_urlsafe(24))
    env.setdefault("LOG_FORMAT", "console")
    with tempfile.TemporaryDirectory(prefix="ollama-demo-") as store:
        if "OLLAMA_BIN" in env:
            _say(f"using OLLAMA_BIN={env['OLLAMA_BIN']}")
        elif real := shutil.which("ollama"):
            env["OLLAMA_BIN"] = real
            _say(f"using the real ollama at {real} (the first run pulls the models)")
        else:
            env["OLLAMA_BIN"] = _simulator()
            env.setdefault("OLLAMA_MODELS", store)
            env.setdefault("SIM_TOKEN_DELAY", "0.05")  # visible chunk-by-chunk streaming
            env.setdefault("LOG_LEVEL", "warning")  # nothing slow to report progress on
            _say(f"ollama is not on PATH: using the simulator at {env['OLLAMA_BIN']}")
        yield env


def _simulator() -> str:
    found = shutil.which("ollama-sim") or str(Path(sys.executable).with_name("ollama-sim"))
    if not Path(found).is_file():
        raise DemoError("neither ollama nor the ollama-sim simulator is installed")
    return found


def _default_package_dir() -> Path:
    beside_package = Path(__file__).resolve().parents[2] / "deployment_package"
    return beside_package if beside_package.is_dir() else Path.cwd() / "deployment_package"


def _print_token(_t: float, text: str) -> None:
    # The demo is the client here: parsing the chunk to print its text is its own business.
    chunk = json.loads(text)
    if chunk.get("choices"):
        content = chunk["choices"][0].get("delta", {}).get("content") or ""
        print(content, end="", flush=True)


def _describe_vector(vector: list[float]) -> str:
    return f"dimension {len(vector)}, first values {[round(v, 4) for v in vector[:4]]}"


def _say(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
