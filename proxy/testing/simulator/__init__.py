"""A faithful Ollama simulator for tests and benchmarks.

``ollama-sim serve`` speaks Ollama's HTTP API with the same routes, status codes, content types,
NDJSON/SSE framing, JSON keys, error shapes and in-band errors as the release in :data:`VERSION`
(0.24.0): the native ``/api``, the OpenAI-compatible ``/v1`` (chat completions, completions,
embeddings, models), the OpenAI Responses API (``/v1/responses``) and the Anthropic Messages API
(``/v1/messages``). ``tests/real_ollama/test_conformance.py`` proves it: one corpus of requests,
successes and errors on every route, streamed and not, sent to the real ``ollama serve`` of that
release and to the simulator, must agree. It honours ``OLLAMA_HOST``/``OLLAMA_MODELS``/
``OLLAMA_KEEP_ALIVE`` and injects faults driven by ``SIM_*`` variables (see
:mod:`proxy.testing.simulator.config`). Responses are deterministic; predict them with
:func:`expected_tokens`, :func:`expected_text` and :func:`expected_embedding`.
:class:`proxy.testing.services.SimulatorProcess` runs it as a subprocess.

Intentional differences from real Ollama:

* **Text and vectors.** Generated text is words picked deterministically from the model and the
  prompt, not language; embeddings are deterministic unit vectors without meaning (at the
  model's width: 384 for ``all-minilm``, 576 for ``smollm2:135m``, which embeds as real Ollama
  lets any model do). Token counts are word counts (plus 4 per chat message); Anthropic's
  streamed input estimate follows Ollama's own rule (a quarter of the request's bytes).
  Sampling options other than ``num_predict``/``max_tokens`` (temperature, seed, stop,
  ``format``) are accepted and ignored; images are ignored.
* **Speed.** Tokens and loads are instant unless ``SIM_TOKEN_DELAY``/``SIM_LOAD_DELAY`` say
  otherwise.
* **Models.** A fixed registry of small library models (plus ``SIM_EXTRA_MODELS``); pulls
  download nothing (manifests and small blobs are written, the weights blob is not) and an
  unknown model's pull fails as the registry would answer (``file does not exist``), where an
  offline Ollama reports its network error. ``/api/show`` describes the registry's models
  (``model_info`` keys, a license, a handful of the hundreds of ``tensors``), not a local import.
* **Capabilities.** Models have ``completion`` or ``embedding`` only: tools, thinking, insert
  (``suffix``) and vision are refused as by a model that lacks them; so no tool calls, reasoning
  output or structured output is ever generated.
* **Faults.** Runner and server failures happen only when a ``SIM_*`` variable asks; a runner
  failure is simulated on streams only (real Ollama answers a non-streamed request whose runner
  died with 500 ``model runner has unexpectedly stopped, ...``).
* **Not served.** Cloud models (``:cloud``; real Ollama forwards them to ollama.com), account and
  web routes (``/api/me``, ``/api/signout``, ``/api/experimental/*``), ``/api/create``,
  ``/api/push``, ``/api/blobs``, ``/api/status``, images and audio: all 404 here, as is
  ``/v1/messages/count_tokens`` on both. Gin's CORS and allowed-host checks, zstd request
  bodies, and HTTP-level details of Go's server (headers other than ``Content-Type``, ``Allow``
  and ``Content-Length``) are not reproduced. Log lines carry ``simulated=true``.

Modules: ``config`` (the environment), ``models`` (names, registry, deterministic output),
``inference`` (request semantics, expected responses), ``runtime`` (shared state: store,
scheduler, fault counters), ``wire`` (Go's JSON in and out, time stamps, log lines, streams),
``ollama_api`` (the native routes), ``compat`` (the response-writer loop the compatibility APIs
share), ``openai_api``, ``responses_api`` and ``anthropic_api`` (those APIs), ``server`` (the app
and ``serve``).
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
