"""A faithful Ollama simulator for tests and benchmarks.

``ollama-sim serve`` speaks Ollama's HTTP API (native ``/api`` and OpenAI ``/v1``) with the
same shapes, status codes, NDJSON/SSE framing and in-band errors as the release in
:data:`VERSION`, honours ``OLLAMA_HOST``/``OLLAMA_MODELS``/``OLLAMA_KEEP_ALIVE``, and injects
faults driven by ``SIM_*`` variables (see :mod:`proxy.testing.simulator.faults`). Responses
are deterministic; predict them with :func:`expected_tokens`, :func:`expected_text` and
:func:`expected_embedding`. :class:`SimulatorProcess` runs it as a subprocess.
"""

from .app import create_app
from .counters import read_pull_log
from .faults import Faults, PullFailureMode
from .generation import (
    embedding_dimension,
    expected_embedding,
    expected_text,
    expected_tokens,
    prompt_token_count,
    text_token_count,
)
from .names import normalise
from .process import SimulatorExited, SimulatorProcess, default_command
from .version import VERSION

__all__ = [
    "VERSION",
    "Faults",
    "PullFailureMode",
    "SimulatorExited",
    "SimulatorProcess",
    "create_app",
    "default_command",
    "embedding_dimension",
    "expected_embedding",
    "expected_text",
    "expected_tokens",
    "normalise",
    "prompt_token_count",
    "read_pull_log",
    "text_token_count",
]
