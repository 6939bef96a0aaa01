"""A faithful Ollama simulator for tests and benchmarks.

``ollama-sim serve`` speaks Ollama's HTTP API (native ``/api`` and OpenAI ``/v1``) with the
same shapes, status codes, NDJSON/SSE framing and in-band errors as the release in
:data:`VERSION`, honours ``OLLAMA_HOST``/``OLLAMA_MODELS``/``OLLAMA_KEEP_ALIVE``, and injects
faults driven by ``SIM_*`` variables (see :mod:`proxy.testing.simulator.config`). Responses
are deterministic; predict them with :func:`expected_tokens`, :func:`expected_text` and
:func:`expected_embedding`. :class:`proxy.testing.services.SimulatorProcess` runs it as a
subprocess.

Modules: ``config`` (the environment), ``models`` (names, registry, deterministic output),
``inference`` (request semantics, expected responses), ``runtime`` (shared state: store,
scheduler, fault counters), ``wire`` (Go's JSON, time stamps, log lines, streams),
``ollama_api`` and ``openai_api`` (the routes), ``server`` (the app, ``serve`` and
:class:`SimulatorProcess`).
"""

from .config import VERSION, Faults, PullFailureMode
from .inference import embedding_dimension, expected_embedding, expected_text, expected_tokens
from .models import normalise, prompt_token_count, text_token_count
from .runtime import read_pull_log
from .server import create_app

__all__ = [
    "VERSION",
    "Faults",
    "PullFailureMode",
    "create_app",
    "embedding_dimension",
    "expected_embedding",
    "expected_text",
    "expected_tokens",
    "normalise",
    "prompt_token_count",
    "read_pull_log",
    "text_token_count",
]
