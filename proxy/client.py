"""The request processes' client of the instance's proxy.

Every UbiOps request process owns one :class:`ProxyClient`: a private asyncio loop and one
keep-alive connection to the proxy on loopback, driven from the calling thread, so UbiOps'
synchronous ``request()`` needs no extra thread and ``streaming_update`` runs on the request
thread. The client is thin on purpose: it picks the endpoint from the payload's input field
(:func:`~proxy.endpoints.ubiops_endpoints`) and relays. The proxy alone resolves models, checks
kinds and fields and words the errors; its error message becomes the ``public_error_message``,
so a request is judged the same through UbiOps as through the proxy's port.

Nothing is re-serialised: JSON text is sent as that text, streamed chunks are relayed as the text
of each SSE event, and a streamed answer's result is those texts joined into a JSON list.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import aiohttp

from proxy.config import Settings
from proxy.endpoints import Endpoint, ubiops_endpoints
from proxy.logs import get_logger
from proxy.sse import SSEDecoder
from proxy.state import NotServingError, Readiness, wait_until_serving

__all__ = [
    "ProxyClient",
    "ProxyUnavailableError",
    "PublicError",
    "RequestFailedError",
    "choose_endpoint",
]

log = get_logger(__name__)

T = TypeVar("T")
StreamCallback = Callable[[str], object]

_ENDPOINTS = ubiops_endpoints()
_READY_PROBE_TIMEOUT = aiohttp.ClientTimeout(total=5.0)
_PROBE_ERRORS = (aiohttp.ClientError, TimeoutError, ValueError)
_CONNECT_TIMEOUT = 10.0
_REDACTED = "[redacted]"


class PublicError(Exception):
    """An error whose ``public_error_message`` UbiOps shows to the caller as the request error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.public_error_message = message


class ProxyUnavailableError(PublicError):
    """The proxy is not reachable, not ready, or never became ready."""


class RequestFailedError(PublicError):
    """The request cannot be sent, or the proxy answered it with an error (``status``)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def choose_endpoint(body: bytes) -> Endpoint:
    """The endpoint a UbiOps payload goes to: the first whose input field it carries.

    A payload that is not a JSON object goes to the first endpoint, whose answer says why.
    """
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        payload = None
    if isinstance(payload, dict):
        for endpoint in _ENDPOINTS:
            if endpoint.ubiops_field in payload:
                return endpoint
    return _ENDPOINTS[0]


class ProxyClient:
    """One request process's link to the proxy: waits for readiness and forwards requests.

    The methods block the calling thread; calls from several threads are serialised. Create one
    per process (it owns an event loop) and :meth:`close` it when the process stops.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._base_url = settings.local_proxy_url
        self._secrets = [key for key in (settings.proxy_api_key, settings.proxy_admin_key) if key]
        self._headers = {"Content-Type": "application/json"}
        if settings.proxy_api_key:
            self._headers["Authorization"] = f"Bearer {settings.proxy_api_key}"
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def wait_ready(self, check: Callable[[], None] | None = None) -> None:
        """Block until the proxy serves, polling ``/readyz`` with a capped backoff.

        ``check`` is called on every pass and may raise to abort the wait (process 0 uses it
        to stop waiting for a proxy its launcher gave up on).

        Raises:
            ProxyUnavailableError: Ollama failed for good, or not ready within READY_TIMEOUT.
        """
        limit = self._settings.ready_timeout
        log.info("waiting for the proxy", url=self._base_url, timeout_s=limit)
        try:
            self._run(
                wait_until_serving(
                    lambda: self._probe(check), within=limit, unreachable=_PROBE_ERRORS
                )
            )
        except NotServingError as exc:
            raise ProxyUnavailableError(
                f"The model server cannot start: {exc.last}. See the deployment logs."
                if exc.gave_up
                else f"The model server did not become ready within {limit:g} s "
                f"(READY_TIMEOUT); last status: {exc.last}. See the deployment logs."
            ) from None

    def forward(self, data: object, streaming_update: StreamCallback | None = None) -> str:
        """Send one UbiOps request to the proxy and return the answer as JSON text.

        A streamed answer calls ``streaming_update`` with each chunk's JSON text as it arrives
        and returns the JSON list of the chunks; any other answer is returned as received.

        Raises:
            PublicError: the proxy is unavailable, or it refused or failed the request. The
                message never holds a key of the proxy: UbiOps logs it.
        """
        try:
            return self._run(self._forward(_body_of(data), streaming_update))
        except PublicError as exc:
            for secret in self._secrets:
                exc.public_error_message = exc.public_error_message.replace(secret, _REDACTED)
            exc.args = (exc.public_error_message,)
            raise

    def close(self) -> None:
        """Close the connection and the event loop; the client is unusable afterwards."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._session is not None:
                self._loop.run_until_complete(self._session.close())
            self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._closed:
                coro.close()
                raise ProxyUnavailableError("This deployment process is shutting down.")
            return self._loop.run_until_complete(coro)

    def _get_session(self) -> aiohttp.ClientSession:
        """The session, made on first use inside the loop; one keep-alive connection."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                base_url=self._base_url,
                connector=aiohttp.TCPConnector(limit=1),
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(
                    connect=_CONNECT_TIMEOUT, sock_read=self._settings.proxy_request_timeout + 30.0
                ),
            )
        return self._session

    async def _probe(self, check: Callable[[], None] | None) -> Readiness:
        if check is not None:
            check()
        async with self._get_session().get("/readyz", timeout=_READY_PROBE_TIMEOUT) as resp:
            return Readiness.from_json(await resp.json(content_type=None))

    async def _forward(self, body: bytes, streaming_update: StreamCallback | None) -> str:
        session = self._get_session()
        path = choose_endpoint(body).path
        for attempt in (1, 2):
            try:
                resp = await session.post(path, data=body)
                break
            except aiohttp.ServerDisconnectedError:
                # A pooled connection the proxy closed (it restarted): once more, fresh.
                if attempt == 2:
                    raise ProxyUnavailableError(
                        "The model server closed the connection without answering (it may be "
                        "restarting); retry in a few seconds."
                    ) from None
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                raise ProxyUnavailableError(
                    f"The model server at {self._base_url} is not reachable ({_describe(exc)}); "
                    "it may be restarting, retry in a few seconds."
                ) from None
        async with resp:
            try:
                if resp.status >= 400:
                    raise RequestFailedError(_message(await resp.read()), resp.status)
                if resp.content_type != "text/event-stream":
                    return (await resp.read()).decode()
                return await _relay_events(resp, streaming_update)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as e:
                raise RequestFailedError(
                    f"The connection to the model server was lost while it answered "
                    f"({_describe(e)}); the answer is incomplete. Retry the request."
                ) from None


async def _relay_events(
    resp: aiohttp.ClientResponse, streaming_update: StreamCallback | None
) -> str:
    chunks: list[str] = []
    decoder = SSEDecoder()
    async for piece in resp.content.iter_any():
        for text in decoder.feed(piece):
            if text == "[DONE]":
                return "[" + ",".join(chunks) + "]"
            if '"error"' in text and (error := _error_of(text)) is not None:
                raise RequestFailedError(f"The answer failed after {len(chunks)} chunks: {error}")
            chunks.append(text)
            if streaming_update is not None:
                streaming_update(text)
    raise RequestFailedError(
        f"The model server ended the stream early, after {len(chunks)} chunks and without "
        "[DONE]; the answer is incomplete. Retry the request."
    )


def _body_of(data: object) -> bytes:
    """The request body: JSON text as it came, anything else as JSON."""
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    if isinstance(data, str):
        return data.encode("utf-8", "surrogatepass")
    try:
        return json.dumps(data).encode()
    except RecursionError:
        raise RequestFailedError("the request body is nested too deeply") from None
    except (TypeError, ValueError) as exc:
        raise RequestFailedError(f"The request cannot be sent as JSON: {exc}.") from None


def _error_of(text: str) -> str | None:
    """The message of an event or body that reports an error, or None for anything else."""
    try:
        document = json.loads(text)
    except ValueError:
        return None
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):
        error = error.get("message") or json.dumps(error)
    return str(error) if error else None


def _message(raw: bytes) -> str:
    """The proxy's error message, as it worded it."""
    text = raw.decode(errors="replace")
    return _error_of(text) or text.strip()[:500] or "the model server gave no details"


def _describe(exc: BaseException) -> str:
    """A short reason for a connection failure: the OS error when there is one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TimeoutError):
            return "timed out"
        if isinstance(seen, OSError):
            return os.strerror(seen.errno).lower() if seen.errno else str(seen.strerror)
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__
