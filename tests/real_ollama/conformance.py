"""The conformance corpus and its comparison: what the simulator must answer as real Ollama does.

:data:`CORPUS` is one list of requests, successes and errors on every route the simulator serves,
streamed and not, on both APIs (native ``/api`` and OpenAI-compatible ``/v1``, Responses and
Anthropic Messages included). :func:`observe` sends one request and reduces the answer to what
must agree (:class:`Observation`): the status, the content type, the framing (JSON with or without
a trailing newline, NDJSON lines, SSE events with their ``event:`` names, ``[DONE]``) and the
*shape* of every JSON document: its keys, recursively, with leaves reduced to their JSON type.
Values are kept only where the protocol fixes them (see :data:`VALUE_KEYS`): object kinds, roles,
finish and stop reasons, event types, and error messages. A stream is the sequence of its
chunks' shapes with runs of equal shapes collapsed, since the number of tokens is the model's
business. :func:`differences` lists where two observations disagree, path by path.

What the real 0.24.0 answers, as measured with this corpus (the audit's open questions included):

* Embeddings from a chat model succeed (200; 576 values for ``smollm2:135m``) on ``/api/embed``,
  ``/api/embeddings`` and ``/v1/embeddings``. An unknown model there is a 404
  ``model "x" not found, try pulling it first``; on chat and generate ``model 'x' not found``.
* Chat on an embedding model is a 400 ``"all-minilm:l6-v2" does not support chat`` before any
  stream begins, streamed or not, on every chat-shaped API; generate says ``generate``.
* Every error found before generation is a plain status with a JSON body, never a 200 stream
  with an in-band error: the native ``{"error"}``, OpenAI's ``{"error": {...}}`` (Responses
  too), Anthropic's ``{"type": "error", ...}``.
* Tools on a model without the capability: 400 ``registry.ollama.ai/library/smollm2:135m does
  not support tools`` (the full name); a ``suffix`` likewise for ``insert``. ``think`` (true or a
  level) on a model that cannot think: 400 ``"smollm2:135m" does not support thinking``, except
  on ``/v1/messages``, where thinking is dropped and the model answers.
* ``/api/tags`` has no ``capabilities``; ``/api/show`` has them (``["completion"]``,
  ``["embedding"]``) and lists the weights' ``tensors``.
* HEAD is served on ``/``, ``/api/version`` and ``/api/tags`` only; every other GET route
  answers HEAD with 405 (``Allow: GET``). ``/v1/messages/count_tokens`` does not exist (404).
* A model runner dying mid-stream: native streams end with an in-band ``{"error": "an error was
  encountered while running the model: unexpected EOF"}`` line, chat completions and completions
  with an empty chunk whose ``model`` is ``""`` and no ``[DONE]``, Responses and Messages with no
  further event at all; all end cleanly with status 200 (``test_conformance``). A runner dying
  under a request that is not streamed is a 500 ``model runner has unexpectedly stopped, this may
  be due to resource limitations or an internal error, check ollama server logs for details``.
  The whole server dying cuts the connection instead (no terminating chunk).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "CHAT_MODEL",
    "CORPUS",
    "EMBEDDING_MODEL",
    "Case",
    "Observation",
    "differences",
    "observe",
]

CHAT_MODEL = "smollm2:135m"
EMBEDDING_MODEL = "all-minilm:l6-v2"
COPY_MODEL = "conformance-copy:latest"

REQUEST_TIMEOUT = 120.0
"""One request, a model load included (seconds)."""

VALUE_KEYS = frozenset(
    {
        "object",
        "type",
        "role",
        "finish_reason",
        "done_reason",
        "stop_reason",
        "status",
        "done",
        "error",
        "message",
        "model",
        "param",
        "code",
    }
)
"""Keys whose string, boolean or null values are compared, not only their type."""

MAX_TOKENS = 4
"""Tokens per generation: enough for a stream of several chunks, few enough to be quick. The
prompt asks for a long answer, so both servers stop at this limit (``length``)."""

PROMPT = "Count from one to twenty in words, separated by commas."
MESSAGES = [{"role": "user", "content": PROMPT}]
OPTIONS = {"num_predict": MAX_TOKENS, "temperature": 0, "seed": 7}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


@dataclass(frozen=True)
class Case:
    """One request of the corpus.

    Args:
        name: unique and readable, used as the test id.
        method: the HTTP method.
        path: the request path.
        body: a JSON-encodable body, ``bytes`` to send as is, or ``None`` for none.
        headers: extra request headers.
        loose: keys whose values are compared by type only here (e.g. an error message that
            names a network failure on one side).
        opaque: keys whose value is compared only by its JSON kind (model-dependent content).
        optional: keys that may be absent on either side (Go's ``omitempty`` on model data).
    """

    name: str
    method: str
    path: str
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    loose: frozenset[str] = frozenset()
    opaque: frozenset[str] = frozenset()
    optional: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Observation:
    """What must agree between two servers for one case."""

    status: int
    content_type: str
    framing: str
    body: Any

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "content_type": self.content_type,
            "framing": self.framing,
            "body": self.body,
        }


def _post(name: str, path: str, body: Any, **kwargs: Any) -> Case:
    return Case(name, "POST", path, body, **kwargs)


def _chat(model: str = CHAT_MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, "options": OPTIONS, **extra}


def _generate(model: str = CHAT_MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "prompt": PROMPT, "options": OPTIONS, **extra}


def _oai_chat(model: str = CHAT_MODEL, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": MESSAGES,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "seed": 7,
        **extra,
    }


def _oai_completion(model: str = CHAT_MODEL, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "seed": 7,
        **extra,
    }


def _responses(model: str = CHAT_MODEL, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "input": PROMPT,
        "max_output_tokens": MAX_TOKENS,
        "temperature": 0,
        **extra,
    }


def _messages(model: str = CHAT_MODEL, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": MAX_TOKENS,
        "messages": MESSAGES,
        "temperature": 0,
        **extra,
    }


USAGE = {"stream_options": {"include_usage": True}}
# What /api/show reports depends on the model file: the simulator mimics the registry's models,
# the real suite has local imports. The response's own keys and the details must agree.
SHOW = {
    "opaque": frozenset({"model_info", "modelfile", "template", "parameters", "license"}),
    "optional": frozenset({"license", "parameters", "template"}),
    "loose": frozenset({"type"}),
}
# Model listings: digests, sizes and dates are the model file's; parent_model is a path.
LISTING = {"loose": frozenset({"parent_model"})}
NETWORK = {"loose": frozenset({"error"})}
"""A pull reaches for the registry: no such host here, the manifest's absence in the simulator."""

CORPUS: tuple[Case, ...] = (
    # --- general ---
    Case("root", "GET", "/"),
    Case("root-head", "HEAD", "/"),
    Case("version", "GET", "/api/version"),
    Case("version-head", "HEAD", "/api/version"),
    Case("unknown-route", "GET", "/api/nope"),
    Case("wrong-method", "GET", "/api/chat"),
    Case("wrong-method-post-tags", "POST", "/api/tags", {}),
    # --- native: models ---
    Case("tags", "GET", "/api/tags", **LISTING),  # type: ignore[arg-type]
    Case("tags-head", "HEAD", "/api/tags"),
    Case("ps-head", "HEAD", "/api/ps"),
    _post("show-chat", "/api/show", {"model": CHAT_MODEL}, **SHOW),  # type: ignore[arg-type]
    _post("show-embedding", "/api/show", {"model": EMBEDDING_MODEL}, **SHOW),  # type: ignore[arg-type]
    _post("show-legacy-name", "/api/show", {"name": CHAT_MODEL}, **SHOW),  # type: ignore[arg-type]
    _post("show-unknown", "/api/show", {"model": "nope"}),
    _post("show-no-model", "/api/show", {}),
    _post("show-no-body", "/api/show", b""),
    _post("show-bad-json", "/api/show", b"{oops"),
    _post("copy", "/api/copy", {"source": CHAT_MODEL, "destination": COPY_MODEL}),
    _post("copy-unknown", "/api/copy", {"source": "nope", "destination": "nope2"}),
    Case("delete-copy", "DELETE", "/api/delete", {"model": COPY_MODEL}),
    Case("delete-again", "DELETE", "/api/delete", {"model": COPY_MODEL}),
    Case("delete-bad-name", "DELETE", "/api/delete", {"model": "Bad Name"}),
    _post("pull-bad-name", "/api/pull", {"model": "Bad Name!"}),
    _post("pull-no-body", "/api/pull", b""),
    _post("pull-unknown", "/api/pull", {"model": "nope-model:1b"}, **NETWORK),  # type: ignore[arg-type]
    _post(
        "pull-unknown-whole",
        "/api/pull",
        {"model": "nope-model:1b", "stream": False},
        **NETWORK,  # type: ignore[arg-type]
    ),
    # --- native: generate ---
    _post("generate-stream", "/api/generate", _generate()),
    _post("generate-whole", "/api/generate", _generate(stream=False)),
    _post("generate-raw", "/api/generate", _generate(stream=False, raw=True)),
    _post("generate-load", "/api/generate", {"model": CHAT_MODEL}),
    _post("generate-unknown", "/api/generate", _generate("nope")),
    _post("generate-unknown-whole", "/api/generate", _generate("nope", stream=False)),
    _post("generate-no-model", "/api/generate", {"prompt": "hi"}),
    _post("generate-embedding-model", "/api/generate", _generate(EMBEDDING_MODEL)),
    _post("generate-think", "/api/generate", _generate(think=True)),
    _post("generate-bad-type", "/api/generate", {"model": CHAT_MODEL, "prompt": 5}),
    _post("generate-bad-json", "/api/generate", b"{oops"),
    _post("generate-empty-name", "/api/generate", _generate("")),
    _post("generate-invalid-name", "/api/generate", _generate("Bad Name")),
    _post("generate-suffix", "/api/generate", _generate(suffix="and so on", stream=False)),
    _post("generate-raw-system", "/api/generate", _generate(raw=True, system="Be brief.")),
    _post("generate-unload", "/api/generate", {"model": CHAT_MODEL, "keep_alive": 0}),
    _post("generate-bad-keep-alive", "/api/generate", _generate(keep_alive="bogus")),
    _post("generate-no-body", "/api/generate", b""),
    _post("generate-not-object", "/api/generate", b"[1]"),
    # --- native: chat ---
    _post("chat-stream", "/api/chat", _chat()),
    _post("chat-whole", "/api/chat", _chat(stream=False)),
    _post("chat-load", "/api/chat", {"model": CHAT_MODEL}),
    _post("chat-unknown", "/api/chat", _chat("nope")),
    _post("chat-unknown-whole", "/api/chat", _chat("nope", stream=False)),
    _post("chat-no-model", "/api/chat", {"messages": MESSAGES}),
    _post("chat-embedding-model", "/api/chat", _chat(EMBEDDING_MODEL)),
    _post("chat-embedding-model-whole", "/api/chat", _chat(EMBEDDING_MODEL, stream=False)),
    _post("chat-think", "/api/chat", _chat(think=True)),
    _post("chat-think-level", "/api/chat", _chat(think="high")),
    _post("chat-think-false", "/api/chat", _chat(think=False, stream=False)),
    _post("chat-tools", "/api/chat", _chat(tools=TOOLS)),
    _post("chat-tools-whole", "/api/chat", _chat(tools=TOOLS, stream=False)),
    _post("chat-bad-messages", "/api/chat", {"model": CHAT_MODEL, "messages": "hi"}),
    _post("chat-bad-json", "/api/chat", b"{oops"),
    _post("chat-invalid-name", "/api/chat", _chat("Bad Name")),
    _post("chat-too-many-logprobs", "/api/chat", _chat(top_logprobs=21)),
    _post("json-trailing-comma", "/api/chat", b'{"model": "nope",}'),
    _post("json-missing-colon", "/api/chat", b'{"model" "nope"}'),
    _post("json-missing-comma", "/api/chat", b'{"model": "nope" "stream": false}'),
    _post("json-array-element", "/api/chat", b'{"messages": [1 2]}'),
    _post("json-truncated", "/api/chat", b'{"model": "nope", "messages": ['),
    _post("json-bad-literal", "/api/chat", b'{"stream": fals}'),
    _post("json-bad-escape", "/api/chat", b'{"model": "\\q"}'),
    _post("json-bad-number", "/api/chat", b'{"stream": -x}'),
    _post("json-top-level-number", "/api/chat", b"5x"),
    _post("json-null", "/api/chat", b"null"),
    _post("json-trailing-data", "/api/chat", b'{"model": "nope"} and more'),
    _post("chat-no-body", "/api/chat", b""),
    # --- native: embeddings ---
    _post("embed", "/api/embed", {"model": EMBEDDING_MODEL, "input": "The cat sits"}),
    _post("embed-list", "/api/embed", {"model": EMBEDDING_MODEL, "input": ["a cat", "a dog"]}),
    _post(
        "embed-dimensions",
        "/api/embed",
        {"model": EMBEDDING_MODEL, "input": "a cat", "dimensions": 8},
    ),
    _post("embed-empty", "/api/embed", {"model": EMBEDDING_MODEL, "input": []}),
    _post("embed-chat-model", "/api/embed", {"model": CHAT_MODEL, "input": "The cat sits"}),
    _post("embed-unknown", "/api/embed", {"model": "nope", "input": "hi"}),
    _post("embed-bad-input", "/api/embed", {"model": EMBEDDING_MODEL, "input": [1, 2]}),
    _post("embed-no-body", "/api/embed", b""),
    _post("embed-empty-name", "/api/embed", {"model": "", "input": "hi"}),
    _post("embed-invalid-name", "/api/embed", {"model": "Bad Name", "input": "hi"}),
    _post("embeddings", "/api/embeddings", {"model": EMBEDDING_MODEL, "prompt": "The cat"}),
    _post("embeddings-empty", "/api/embeddings", {"model": EMBEDDING_MODEL}),
    _post("embeddings-chat-model", "/api/embeddings", {"model": CHAT_MODEL, "prompt": "hi"}),
    _post("embeddings-unknown", "/api/embeddings", {"model": "nope", "prompt": "hi"}),
    _post("embeddings-no-model", "/api/embeddings", {"prompt": "hi"}),
    _post("embeddings-bad-type", "/api/embeddings", {"model": EMBEDDING_MODEL, "prompt": 5}),
    _post("show-invalid-name", "/api/show", {"model": "Bad Name"}),
    # --- OpenAI: chat completions ---
    _post("oai-chat-whole", "/v1/chat/completions", _oai_chat()),
    _post("oai-chat-stream", "/v1/chat/completions", _oai_chat(stream=True)),
    _post("oai-chat-stream-usage", "/v1/chat/completions", _oai_chat(stream=True, **USAGE)),
    _post(
        "oai-chat-parts",
        "/v1/chat/completions",
        _oai_chat(messages=[{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]),
    ),
    _post("oai-chat-unknown", "/v1/chat/completions", _oai_chat("nope")),
    _post("oai-chat-unknown-stream", "/v1/chat/completions", _oai_chat("nope", stream=True)),
    _post("oai-chat-embedding-model", "/v1/chat/completions", _oai_chat(EMBEDDING_MODEL)),
    _post(
        "oai-chat-embedding-model-stream",
        "/v1/chat/completions",
        _oai_chat(EMBEDDING_MODEL, stream=True),
    ),
    _post("oai-chat-tools", "/v1/chat/completions", _oai_chat(tools=TOOLS)),
    _post("oai-chat-no-messages", "/v1/chat/completions", _oai_chat(messages=[])),
    _post("oai-chat-no-model", "/v1/chat/completions", _oai_chat("")),
    _post("oai-chat-effort", "/v1/chat/completions", _oai_chat(reasoning_effort="high")),
    _post("oai-chat-bad-effort", "/v1/chat/completions", _oai_chat(reasoning_effort="huge")),
    _post("oai-chat-bad-type", "/v1/chat/completions", _oai_chat(stream="yes")),
    _post("oai-chat-bad-content", "/v1/chat/completions", _oai_chat(messages=[{"role": "user"}])),
    _post("oai-chat-bad-json", "/v1/chat/completions", b"{oops"),
    _post("oai-chat-no-body", "/v1/chat/completions", b""),
    # --- OpenAI: completions ---
    _post("oai-completion-whole", "/v1/completions", _oai_completion()),
    _post("oai-completion-stream", "/v1/completions", _oai_completion(stream=True)),
    _post("oai-completion-stream-usage", "/v1/completions", _oai_completion(stream=True, **USAGE)),
    _post("oai-completion-unknown", "/v1/completions", _oai_completion("nope")),
    _post("oai-completion-embedding-model", "/v1/completions", _oai_completion(EMBEDDING_MODEL)),
    # --- OpenAI: embeddings ---
    _post("oai-embeddings", "/v1/embeddings", {"model": EMBEDDING_MODEL, "input": "The cat"}),
    _post("oai-embeddings-list", "/v1/embeddings", {"model": EMBEDDING_MODEL, "input": ["a", "b"]}),
    _post(
        "oai-embeddings-base64",
        "/v1/embeddings",
        {"model": EMBEDDING_MODEL, "input": "a", "encoding_format": "base64"},
    ),
    _post("oai-embeddings-chat-model", "/v1/embeddings", {"model": CHAT_MODEL, "input": "a"}),
    _post("oai-embeddings-unknown", "/v1/embeddings", {"model": "nope", "input": "a"}),
    _post(
        "oai-embeddings-bad-format",
        "/v1/embeddings",
        {"model": EMBEDDING_MODEL, "input": "a", "encoding_format": "int8"},
    ),
    _post("oai-embeddings-no-input", "/v1/embeddings", {"model": EMBEDDING_MODEL}),
    _post("oai-embeddings-empty-string", "/v1/embeddings", {"model": EMBEDDING_MODEL, "input": ""}),
    _post("oai-embeddings-no-model", "/v1/embeddings", {"input": "a"}),
    # --- OpenAI: models ---
    Case("oai-models", "GET", "/v1/models", **LISTING),  # type: ignore[arg-type]
    Case("oai-model", "GET", f"/v1/models/{CHAT_MODEL}"),
    Case("oai-model-unknown", "GET", "/v1/models/nope"),
    Case("oai-models-head", "HEAD", "/v1/models"),
    # --- OpenAI: Responses ---
    _post("responses-whole", "/v1/responses", _responses()),
    _post("responses-stream", "/v1/responses", _responses(stream=True)),
    _post(
        "responses-items",
        "/v1/responses",
        _responses(
            instructions="Answer briefly.",
            input=[{"type": "message", "role": "user", "content": PROMPT}],
        ),
    ),
    _post(
        "responses-history",
        "/v1/responses",
        _responses(
            input=[
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {
                    "type": "function_call",
                    "call_id": "c1",
                    "name": "get_weather",
                    "arguments": '{"city": "Paris"}',
                },
                {"type": "function_call_output", "call_id": "c1", "output": "Sunny"},
                {"role": "user", "content": PROMPT},
            ]
        ),
    ),
    _post("responses-empty-input", "/v1/responses", _responses(input="")),
    _post("responses-empty-input-stream", "/v1/responses", _responses(input="", stream=True)),
    _post("responses-unknown", "/v1/responses", _responses("nope")),
    _post("responses-unknown-stream", "/v1/responses", _responses("nope", stream=True)),
    _post("responses-embedding-model", "/v1/responses", _responses(EMBEDDING_MODEL)),
    _post("responses-bad-input", "/v1/responses", _responses(input=5)),
    _post("responses-unknown-item", "/v1/responses", _responses(input=[{"type": "bogus"}])),
    _post("responses-untyped-item", "/v1/responses", _responses(input=[{"content": "x"}])),
    _post(
        "responses-unknown-part",
        "/v1/responses",
        _responses(input=[{"role": "user", "content": [{"type": "bogus"}]}]),
    ),
    _post(
        "responses-file",
        "/v1/responses",
        _responses(input=[{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]),
    ),
    _post(
        "responses-tools",
        "/v1/responses",
        _responses(tools=[{"type": "function", "name": "get_weather", "parameters": {}}]),
    ),
    _post("responses-no-model", "/v1/responses", _responses("")),
    _post("responses-bad-effort", "/v1/responses", _responses(reasoning={"effort": "huge"})),
    _post("responses-think", "/v1/responses", _responses(reasoning={"effort": "high"})),
    _post("responses-bad-json", "/v1/responses", b"{oops"),
    _post("responses-no-body", "/v1/responses", b""),
    Case("responses-get", "GET", "/v1/responses"),
    # --- Anthropic Messages ---
    _post("messages-whole", "/v1/messages", _messages()),
    _post("messages-stream", "/v1/messages", _messages(stream=True)),
    _post(
        "messages-system-blocks",
        "/v1/messages",
        _messages(
            system=[{"type": "text", "text": "Answer briefly."}],
            messages=[{"role": "user", "content": [{"type": "text", "text": PROMPT}]}],
        ),
    ),
    _post("messages-unknown", "/v1/messages", _messages("nope")),
    _post("messages-unknown-stream", "/v1/messages", _messages("nope", stream=True)),
    _post("messages-embedding-model", "/v1/messages", _messages(EMBEDDING_MODEL)),
    _post("messages-no-max-tokens", "/v1/messages", {"model": CHAT_MODEL, "messages": MESSAGES}),
    _post("messages-no-messages", "/v1/messages", _messages(messages=[])),
    _post("messages-no-model", "/v1/messages", _messages(model="")),
    _post("messages-thinking", "/v1/messages", _messages(thinking={"type": "enabled"})),
    _post(
        "messages-tools",
        "/v1/messages",
        _messages(tools=[{"name": "get_weather", "input_schema": {"type": "object"}}]),
    ),
    _post(
        "messages-tool-result",
        "/v1/messages",
        _messages(
            messages=[
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "Sunny"},
                        {"type": "text", "text": PROMPT},
                    ],
                },
            ]
        ),
    ),
    _post(
        "messages-image-url",
        "/v1/messages",
        _messages(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "url", "url": "http://x"}}],
                }
            ]
        ),
    ),
    _post(
        "messages-bad-content", "/v1/messages", _messages(messages=[{"role": "user", "content": 5}])
    ),
    _post("messages-bad-type", "/v1/messages", _messages(max_tokens="many")),
    _post("messages-no-body", "/v1/messages", b""),
    _post("messages-bad-json", "/v1/messages", b"{oops"),
    _post("messages-count-tokens", "/v1/messages/count_tokens", _messages()),
    # --- last: what is loaded now ---
    Case("ps", "GET", "/api/ps", **LISTING),  # type: ignore[arg-type]
)


def observe(
    url: str,
    case: Case,
    *,
    timeout: float = REQUEST_TIMEOUT,
    after_chunks: int | None = None,
    action: Callable[[], object] | None = None,
) -> Observation:
    """Send ``case`` to the server at ``url`` and reduce the answer to an :class:`Observation`.

    With ``after_chunks`` and ``action``, ``action`` runs once that many chunks (NDJSON lines or
    SSE ``data:`` lines) of a streamed answer have arrived, and the rest is read after it.
    """
    if isinstance(case.body, bytes) or case.body is None:
        data = case.body
    else:
        data = json.dumps(case.body).encode()
    headers = dict(case.headers)
    if data is not None:
        headers.setdefault("Content-Type", "application/json")
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request(case.method, case.path, body=data, headers=headers)
        response = conn.getresponse()
        raw, seen = b"", 0
        while line := response.readline():
            raw += line
            if line.startswith((b"{", b"data:")):
                seen += 1
                if action is not None and seen == after_chunks:
                    action()
    finally:
        conn.close()
    content_type = response.getheader("Content-Type", "")
    framing, body = _reduce(raw, content_type, case)
    return Observation(response.status, content_type, framing, body)


def _reduce(raw: bytes, content_type: str, case: Case) -> tuple[str, Any]:
    if not raw:
        return "empty", None
    text = raw.decode("utf-8", errors="replace")
    if content_type.startswith("application/x-ndjson"):
        lines = text.split("\n")
        framing = "ndjson" if lines[-1] == "" else "ndjson, no final newline"
        return framing, _collapse([_shape(json.loads(line), case) for line in lines if line])
    if content_type.startswith("text/event-stream"):
        return _sse(text, case)
    if content_type.startswith("application/json"):
        framing = "json + newline" if text.endswith("\n") else "json"
        return framing, _shape(json.loads(text), case)
    return "text", text


def _sse(text: str, case: Case) -> tuple[str, Any]:
    framing = "sse" if text.endswith("\n\n") else "sse, unterminated"
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        event: dict[str, Any] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            if name == "data":
                event["data"] = value if value == "[DONE]" else _shape(json.loads(value), case)
            else:
                event[name] = value
        events.append(event)
    return framing, _collapse(events)


def _collapse(items: list[Any]) -> list[Any]:
    """Runs of equal items become one: the number of tokens is the model's business."""
    out: list[Any] = []
    for item in items:
        if not out or out[-1] != item:
            out.append(item)
    return out


def _shape(value: Any, case: Case, key: str = "") -> Any:
    if key in case.opaque:
        return f"<{_kind(value)}>"
    if isinstance(value, dict):
        return {k: _shape(v, case, k) for k, v in sorted(value.items())}
    if isinstance(value, list):
        shapes: list[Any] = []
        for item in value:
            shape = _shape(item, case)
            if shape not in shapes:
                shapes.append(shape)
        if len(shapes) == 1:
            return {"[*]": shapes[0]}
        return {"[*]": sorted(shapes, key=lambda s: json.dumps(s, sort_keys=True))}
    if (
        key in VALUE_KEYS
        and key not in case.loose
        and (value is None or isinstance(value, bool | str))
    ):
        return value if value is None or isinstance(value, bool) else f"={value}"
    return _kind(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def differences(real: Observation, sim: Observation, case: Case) -> list[str]:
    """Where ``sim`` disagrees with ``real``, one line per difference (empty when they agree)."""
    return list(_diff(real.as_dict(), sim.as_dict(), "", case))


def _diff(real: Any, sim: Any, path: str, case: Case) -> Iterator[str]:
    if isinstance(real, dict) and isinstance(sim, dict):
        for key in sorted(set(real) | set(sim), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in sim:
                if key not in case.optional:
                    yield f"{where}: only real has it ({_short(real[key])})"
            elif key not in real:
                if key not in case.optional:
                    yield f"{where}: only the simulator has it ({_short(sim[key])})"
            else:
                yield from _diff(real[key], sim[key], where, case)
    elif isinstance(real, list) and isinstance(sim, list) and len(real) == len(sim):
        for index, (a, b) in enumerate(zip(real, sim, strict=True)):
            yield from _diff(a, b, f"{path}[{index}]", case)
    elif real != sim:
        yield f"{path}: real {_short(real)} != simulator {_short(sim)}"


def _short(value: Any, limit: int = 600) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + "..."
