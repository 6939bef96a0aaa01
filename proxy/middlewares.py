"""The two middlewares of the app: the request context (outermost) and authentication.

:func:`request_middleware` gives every request its id (the client's ``X-Request-ID`` or a new
one), binds it to every log line with ``structlog.contextvars``, returns it, rejects bodies over
the limit, maps every error to a response in the API's own shape (the one place errors become
HTTP), and records the access-log event and the metrics. :func:`auth_middleware` checks the API
key in constant time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from structlog.contextvars import bound_contextvars

from proxy.access_log import Exchange, log_exchange
from proxy.appkeys import CALLER, EXCHANGE, RATES
from proxy.endpoints import api_of, endpoint_for
from proxy.errors import (
    AuthenticationError,
    HTTPStatusError,
    InternalError,
    PayloadTooLargeError,
    ProxyError,
    UpstreamTimeoutError,
    error_response,
    send_and_close,
)
from proxy.keys import KeyRing
from proxy.logs import get_logger
from proxy.metrics import Metrics
from proxy.upstream import unreachable

__all__ = [
    "CLIENT_CLOSED",
    "auth_middleware",
    "bearer_token",
    "request_middleware",
]

CLIENT_CLOSED = 499
"""The status recorded (never sent) for a request whose client went away."""

log = get_logger(__name__)

_REQUEST_ID = "X-Request-ID"
_MAX_REQUEST_ID = 128
_UNMATCHED = "unmatched"
_BODY_LIMIT_EXEMPT = "/api/blobs/"


def request_middleware(*, metrics: Metrics, max_body: int) -> Middleware:
    """Build the outermost middleware.

    Args:
        metrics: where each finished request is recorded.
        max_body: the largest request body accepted (``PROXY_MAX_BODY``); a larger declared
            ``Content-Length`` is refused with 413 before the body is read. Model-blob uploads
            (``/api/blobs/``) are exempt: they are streamed through, never held in memory.
    """
    too_large = f"the request body is larger than the limit of {max_body} bytes"

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = request.headers.get(_REQUEST_ID)
        if not request_id or not _valid_request_id(request_id):
            request_id = uuid.uuid4().hex
        resource = request.match_info.route.resource
        route = resource.canonical if resource else _UNMATCHED
        endpoint = endpoint_for(route)
        api = endpoint.api if endpoint is not None else api_of(request.path)
        exchange = Exchange(request_id, route)
        request[EXCHANGE] = exchange
        with bound_contextvars(request_id=request_id):
            try:
                length = request.content_length
                if (
                    length is not None
                    and length > max_body
                    and not request.path.startswith(_BODY_LIMIT_EXEMPT)
                ):
                    raise PayloadTooLargeError(too_large)
                response = await handler(request)
            except ProxyError as exc:
                response = error_response(exc, api)
                if exc.closes_connection:
                    response.headers[_REQUEST_ID] = request_id
                    await send_and_close(request, response)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                response = error_response(_from_http(request, exc, too_large), api)
            except asyncio.CancelledError:
                if not exchange.status:  # the relay records a stream the client had whole
                    exchange.status = CLIENT_CLOSED
                    exchange.error = exchange.error or "client disconnected"
                _finish(request, exchange, metrics)
                raise
            except Exception as exc:
                if exchange.committed:  # the answer is under way: nothing more can be sent
                    exchange.status = 500
                    exchange.error = f"failed mid-stream: {exc!r}"
                    _finish(request, exchange, metrics)
                    raise
                response = error_response(_from_exception(exc), api)
            if not response.prepared:
                response.headers[_REQUEST_ID] = request_id
            if not exchange.status:  # the relay records 499 for a client gone mid-stream
                exchange.status = response.status
            _finish(request, exchange, metrics)
            return response

    return middleware


def auth_middleware(keys: KeyRing, *, open_paths: Iterable[str] = ()) -> Middleware:
    """Build the middleware that requires a key of ``keys``.

    The key comes as ``Authorization: Bearer <key>`` or ``x-api-key: <key>``; the key found is
    the request's :data:`~proxy.appkeys.CALLER`. ``open_paths`` (the health probes) are served
    without a key, but a key presented there still says who is asking.
    """
    exempt = frozenset(open_paths)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = bearer_token(request)
        caller = keys.identify(token) if token is not None else None
        if caller is not None:
            request[CALLER] = caller
            request[EXCHANGE].key = caller.name
        elif request.path not in exempt:
            if token is None:
                raise AuthenticationError(
                    "missing API key: send the header 'Authorization: Bearer <key>'"
                )
            raise AuthenticationError("incorrect API key")
        return await handler(request)

    return middleware


def bearer_token(request: web.Request) -> str | None:
    """The key a request presents: ``Authorization: Bearer <key>``, else ``x-api-key``.

    ``x-api-key`` also counts beside an ``Authorization`` header of another scheme, such as the
    ``Token`` a UbiOps Service may pass through.
    """
    header = request.headers.get("Authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    api_key = request.headers.get("x-api-key")
    return (api_key.strip() or None) if api_key else None


def _valid_request_id(value: str) -> bool:
    return len(value) <= _MAX_REQUEST_ID and value.isascii() and value.isprintable()


def _finish(request: web.Request, exchange: Exchange, metrics: Metrics) -> None:
    seconds = time.perf_counter() - exchange.started
    stream_failed = (
        exchange.error is not None
        and exchange.first_chunk_at is not None
        and exchange.status != CLIENT_CLOSED
    )
    metrics.observe(exchange, seconds, stream_failed=stream_failed)
    if exchange.usage is not None:
        window = request.app[RATES].get(exchange.key)
        if window is not None:
            window.spent(exchange.usage.total)
    log_exchange(exchange, request.method, request.path, seconds)


def _from_http(request: web.Request, exc: web.HTTPException, too_large: str) -> ProxyError:
    status = exc.status
    if status == 404:
        message = f"{request.method} {request.path} is not a route of this server"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.path}"
    elif status == 413:
        message = too_large
    else:
        message = exc.text or exc.reason
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
    return HTTPStatusError(status, message, headers)


def _from_exception(exc: Exception) -> ProxyError:
    if isinstance(exc, TimeoutError):
        return UpstreamTimeoutError("the request timed out")
    if isinstance(exc, aiohttp.ClientError):
        return unreachable(exc)
    log.exception("unhandled error")
    return InternalError("internal error in the proxy; see its log for details")
