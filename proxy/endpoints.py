"""Every public path of the proxy, declared once, as data.

:data:`ENDPOINTS` is the table: method, path, API, what the proxy does with it, and for model
routes the model kind, streaming default and the fields the proxy relies on. The application
generates its handlers from it (:mod:`proxy.routes`); the request processes pick their endpoint
from it (:mod:`proxy.ubiops_request`); error shapes follow each endpoint's API. This module is
plain data, light enough for the request processes to import.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.catalog import ModelKind

__all__ = [
    "ENDPOINTS",
    "Api",
    "Endpoint",
    "Field",
    "Framing",
    "Serves",
    "api_of",
    "endpoint_for",
    "ubiops_endpoints",
]


class Api(enum.Enum):
    """Which API an endpoint belongs to, and so the shape of its errors."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    OLLAMA = "ollama"
    PLAIN = "plain"


class Framing(enum.Enum):
    """How a streamed answer is framed, which says how it ends and how it reports an error."""

    SSE = "sse"
    """OpenAI chat and completions: ``data:`` events, ending with ``data: [DONE]``."""
    SSE_RESPONSES = "sse-responses"
    """OpenAI Responses: named events, ending with ``response.completed`` (or failed)."""
    SSE_ANTHROPIC = "sse-anthropic"
    """Anthropic Messages: named events, ending with ``message_stop``."""
    NDJSON = "ndjson"
    """Ollama: one JSON object per line, the last one ``"done": true``."""


class Serves(enum.Enum):
    """What the proxy does with a request to an endpoint."""

    INFERENCE = "inference"
    """Resolve the model, check its kind, take a concurrency slot, forward, relay."""
    MODEL_INFO = "model info"
    """Resolve the model and forward (no slot: quick metadata)."""
    MODEL_LIST = "model list"
    """List the catalog in the API's shape."""
    MODEL_GET = "model get"
    """One catalog model in the API's shape."""
    PASSTHROUGH = "passthrough"
    """Forward as is (quick metadata)."""
    MANAGEMENT = "management"
    """Forward untouched, admin key only."""
    REFUSED = "refused"
    """An ollama.com account or cloud feature: refused, never forwarded."""
    ROOT = "root"
    """Answer like Ollama's ``/``."""
    HEALTH = "health"
    """Liveness, no key."""
    READINESS = "readiness"
    """The readiness document, no key."""
    METRICS = "metrics"
    """Prometheus metrics."""


@dataclass(frozen=True, slots=True)
class Field:
    """A request field the proxy relies on: its name, allowed JSON types, and if required."""

    name: str
    types: tuple[type, ...]
    required: bool = False


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One public path.

    Attributes:
        method: the HTTP method (``*``: any).
        path: the aiohttp path pattern.
        api: the API it belongs to.
        serves: what the proxy does with it.
        kind: for model routes, the model kind it needs (None: any).
        stream_default: what a missing ``stream`` means (None: it never streams).
        fields: the fields the proxy checks before forwarding.
        name_fields: the fields that may carry the model name, in order of precedence.
        ubiops_field: the payload field by which a UbiOps request picks this endpoint.
        open: served without an API key (orchestrator probes).
        events: how its server-sent events are framed, when it streams them.
    """

    method: str
    path: str
    api: Api
    serves: Serves
    kind: ModelKind | None = None
    stream_default: bool | None = None
    fields: tuple[Field, ...] = ()
    name_fields: tuple[str, ...] = ("model",)
    ubiops_field: str | None = None
    open: bool = False
    events: Framing = Framing.SSE

    @property
    def guarded(self) -> bool:
        """Whether a request takes a slot of the concurrency guard (inference does)."""
        return self.serves is Serves.INFERENCE


_STREAM = Field("stream", (bool,))
_TEXT_OR_LIST = (str, list)


def _inference(
    path: str,
    api: Api,
    kind: ModelKind,
    stream_default: bool | None,
    *fields: Field,
    ubiops_field: str | None = None,
    events: Framing = Framing.SSE,
) -> Endpoint:
    return Endpoint(
        "POST",
        path,
        api,
        Serves.INFERENCE,
        kind,
        stream_default,
        fields,
        ubiops_field=ubiops_field,
        events=events,
    )


def _management(path: str) -> Endpoint:
    return Endpoint("*", path, Api.OLLAMA, Serves.MANAGEMENT)


ENDPOINTS: tuple[Endpoint, ...] = (
    # OpenAI
    _inference(
        "/v1/chat/completions",
        Api.OPENAI,
        ModelKind.CHAT,
        False,
        Field("messages", (list,), required=True),
        _STREAM,
        ubiops_field="messages",
    ),
    _inference(
        "/v1/completions",
        Api.OPENAI,
        ModelKind.CHAT,
        False,
        Field("prompt", (str,), required=True),
        _STREAM,
        ubiops_field="prompt",
    ),
    _inference(
        "/v1/embeddings",
        Api.OPENAI,
        ModelKind.EMBEDDING,
        None,
        Field("input", _TEXT_OR_LIST, required=True),
        ubiops_field="input",
    ),
    _inference(
        "/v1/responses",
        Api.OPENAI,
        ModelKind.CHAT,
        False,
        Field("input", _TEXT_OR_LIST, required=True),
        _STREAM,
        ubiops_field="input",
        events=Framing.SSE_RESPONSES,
    ),
    Endpoint("GET", "/v1/models", Api.OPENAI, Serves.MODEL_LIST),
    Endpoint("GET", "/v1/models/{model:.+}", Api.OPENAI, Serves.MODEL_GET),
    # Anthropic
    _inference(
        "/v1/messages",
        Api.ANTHROPIC,
        ModelKind.CHAT,
        False,
        Field("messages", (list,), required=True),
        _STREAM,
        ubiops_field="messages",
        events=Framing.SSE_ANTHROPIC,
    ),
    # Ollama
    Endpoint("GET", "/", Api.OLLAMA, Serves.ROOT),
    _inference("/api/chat", Api.OLLAMA, ModelKind.CHAT, True, Field("messages", (list,)), _STREAM),
    _inference("/api/generate", Api.OLLAMA, ModelKind.CHAT, True, Field("prompt", (str,)), _STREAM),
    _inference("/api/embed", Api.OLLAMA, ModelKind.EMBEDDING, None, Field("input", _TEXT_OR_LIST)),
    _inference("/api/embeddings", Api.OLLAMA, ModelKind.EMBEDDING, None, Field("prompt", (str,))),
    Endpoint("POST", "/api/show", Api.OLLAMA, Serves.MODEL_INFO, name_fields=("model", "name")),
    Endpoint("GET", "/api/tags", Api.OLLAMA, Serves.MODEL_LIST),
    Endpoint("GET", "/api/ps", Api.OLLAMA, Serves.PASSTHROUGH),
    Endpoint("GET", "/api/version", Api.OLLAMA, Serves.PASSTHROUGH),
    _management("/api/pull"),
    _management("/api/push"),
    _management("/api/delete"),
    _management("/api/create"),
    _management("/api/copy"),
    _management("/api/blobs/{digest}"),
    # ollama.com accounts and cloud features: never forwarded
    Endpoint("POST", "/api/me", Api.OLLAMA, Serves.REFUSED),
    Endpoint("POST", "/api/signout", Api.OLLAMA, Serves.REFUSED),
    Endpoint("DELETE", "/api/user/keys/{key}", Api.OLLAMA, Serves.REFUSED),
    Endpoint("POST", "/api/experimental/web_search", Api.OLLAMA, Serves.REFUSED),
    Endpoint("POST", "/api/experimental/web_fetch", Api.OLLAMA, Serves.REFUSED),
    Endpoint("GET", "/api/experimental/model-recommendations", Api.OLLAMA, Serves.REFUSED),
    # Operations
    Endpoint("GET", "/healthz", Api.PLAIN, Serves.HEALTH, open=True),
    Endpoint("GET", "/readyz", Api.PLAIN, Serves.READINESS, open=True),
    Endpoint("GET", "/metrics", Api.PLAIN, Serves.METRICS),
)

_BY_PATH: Mapping[str, Endpoint] = {endpoint.path: endpoint for endpoint in ENDPOINTS}


def endpoint_for(path_pattern: str) -> Endpoint | None:
    """The endpoint declared with ``path_pattern`` (an aiohttp resource's canonical path)."""
    return _BY_PATH.get(path_pattern)


def api_of(path: str) -> Api:
    """The API of a request path no endpoint matched: ``/v1`` is OpenAI, the rest Ollama."""
    return Api.OPENAI if path == "/v1" or path.startswith("/v1/") else Api.OLLAMA


def ubiops_endpoints() -> tuple[Endpoint, ...]:
    """The endpoints a UbiOps request can reach, in the order their fields are looked for
    (where two share a field, the model's kind decides: see :mod:`proxy.ubiops_request`)."""
    return tuple(endpoint for endpoint in ENDPOINTS if endpoint.ubiops_field is not None)
