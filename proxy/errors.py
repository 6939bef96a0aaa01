"""Typed errors of the proxy and their wire shapes, in one place.

Handlers and helpers raise a :class:`ProxyError` subclass; the request middleware turns it into a
response in the shape of the API the endpoint belongs to (:class:`~proxy.endpoints.Api`):

* OpenAI: ``{"error": {"message", "type", "param", "code"}}``;
* Ollama and everything else: ``{"error": "..."}``.

Errors that happen after a stream has started cannot change the status any more; they are
written in the stream's own framing by :func:`stream_error_frame` (an SSE ``data:`` event or an
NDJSON line).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from proxy.endpoints import Api, Framing

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "HTTPStatusError",
    "InternalError",
    "ModelNotFoundError",
    "ModelUnavailableError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProxyError",
    "QueueFullError",
    "RequestTimeoutError",
    "UpstreamTimeoutError",
    "UpstreamUnavailableError",
    "WrongModelKindError",
    "error_body",
    "error_response",
    "send_and_close",
    "stream_error_frame",
]

_JSON = "application/json"


class ProxyError(Exception):
    """Base of every error the proxy answers with; subclasses only set class attributes.

    Args:
        message: the human-readable text, sent to the client as is.
        param: the offending request field (OpenAI ``param``), if any.
        retry_after: seconds for a ``Retry-After`` header, if the client should retry.
    """

    status: int = 500
    openai_type: str = "api_error"
    code: str | None = None
    closes_connection: bool = False

    def __init__(
        self, message: str, *, param: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        """Extra response headers (``Retry-After``, ``WWW-Authenticate``)."""
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


class BadRequestError(ProxyError):
    """The request body is unusable: invalid JSON, a missing or mistyped field."""

    status = 400
    openai_type = "invalid_request_error"


class WrongModelKindError(BadRequestError):
    """A chat model on an embeddings route, or an embedding model on a generation route."""

    code = "model_not_supported"


class AuthenticationError(ProxyError):
    """No API key, or the wrong one."""

    status = 401
    openai_type = "invalid_request_error"
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class PermissionDeniedError(ProxyError):
    """A management route without the admin key."""

    status = 403
    openai_type = "permission_error"
    code = "forbidden"


class ModelNotFoundError(ProxyError):
    """The requested model is not served here; the message lists the available ones."""

    status = 404
    openai_type = "invalid_request_error"
    code = "model_not_found"


class RequestTimeoutError(ProxyError):
    """The client did not send its whole request within ``PROXY_CLIENT_TIMEOUT``."""

    status = 408
    openai_type = "invalid_request_error"
    code = "request_timeout"
    closes_connection = True  # the rest of the body may still come: the connection is unusable


class PayloadTooLargeError(ProxyError):
    """The request body exceeds ``PROXY_MAX_BODY``."""

    status = 413
    openai_type = "invalid_request_error"
    code = "request_too_large"


class QueueFullError(ProxyError):
    """Every forwarding slot is busy and the wait queue is full."""

    status = 429
    openai_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class InternalError(ProxyError):
    """A bug in the proxy (the details are logged, not sent)."""

    status = 500
    code = "internal_error"


class ModelUnavailableError(ProxyError):
    """The model is configured but not servable now (pull failed, Ollama restarting)."""

    status = 503
    code = "model_unavailable"


class UpstreamUnavailableError(ProxyError):
    """Ollama could not be reached or dropped the connection before answering."""

    status = 503
    code = "upstream_unavailable"


class UpstreamTimeoutError(ProxyError):
    """Ollama did not answer (or send the next chunk) within ``PROXY_REQUEST_TIMEOUT``."""

    status = 504
    code = "upstream_timeout"


class HTTPStatusError(ProxyError):
    """An error aiohttp raised itself (unknown route, wrong method), keeping its status."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.openai_type = _openai_type_for(status)
        self._headers = dict(headers or {})

    def headers(self) -> dict[str, str]:
        return self._headers


def _openai_type_for(status: int) -> str:
    if status == 404:
        return "not_found_error"
    if 400 <= status < 500:
        return "invalid_request_error"
    return "api_error"


def error_body(
    api: Api,
    message: str,
    *,
    status: int = 500,
    openai_type: str = "api_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """The JSON error document of ``api`` for an error of HTTP ``status``."""
    if api is Api.OPENAI:
        return {"error": {"message": message, "type": openai_type, "param": param, "code": code}}
    if api is Api.ANTHROPIC:
        default = "invalid_request_error" if status < 500 else "api_error"
        kind = _ANTHROPIC_TYPES.get(status, default)
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": message}


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
"""Anthropic's error type for each status it documents; others by class (4xx, 5xx)."""


def error_response(error: ProxyError, api: Api) -> web.Response:
    """The complete HTTP response for ``error`` in ``api``'s shape."""
    body = error_body(
        api,
        error.message,
        status=error.status,
        openai_type=error.openai_type,
        param=error.param,
        code=error.code,
    )
    response = web.Response(
        body=json.dumps(body).encode(),
        status=error.status,
        headers={"Content-Type": _JSON, **error.headers()},
    )
    if error.closes_connection:
        response.force_close()
    return response


async def send_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send ``response`` now, then drop the connection without waiting for the rest of the body.

    aiohttp otherwise lingers for up to 10 s reading what a stalled client never sends.
    """
    await response.prepare(request)
    await response.write_eof()
    if request.transport is not None:
        request.transport.close()


def stream_error_frame(framing: Framing, message: str, *, code: str = "upstream_error") -> bytes:
    """An error in the framing of a stream that has already started, one a stock client raises.

    * OpenAI chat and completions: a ``data:`` event whose JSON has an ``error`` object (the
      openai client raises ``APIError`` on it);
    * OpenAI Responses: an ``error`` event with Responses' fields (``type``, ``code``,
      ``message``, ``param``) and an ``error`` object, on which the openai client raises;
    * Anthropic Messages: an ``error`` event in Anthropic's error shape (the anthropic client
      raises on it);
    * NDJSON: an ``{"error": ...}`` line (the ollama client raises ``ResponseError``).
    """
    if framing is Framing.NDJSON:
        return json.dumps({"error": message}).encode() + b"\n"
    openai = error_body(Api.OPENAI, message, openai_type="api_error", code=code)
    if framing is Framing.SSE:
        return b"data: " + json.dumps(openai).encode() + b"\n\n"
    if framing is Framing.SSE_RESPONSES:
        data: dict[str, Any] = {"type": "error", "code": code, "message": message, "param": None}
        data.update(openai)
    else:
        data = error_body(Api.ANTHROPIC, message, status=500)
    return b"event: error\ndata: " + json.dumps(data).encode() + b"\n\n"
