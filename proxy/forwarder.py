"""Forward UbiOps requests to the instance's proxy, from any request process.

Every UbiOps request process owns one :class:`ProxyClient`. It holds a private asyncio event loop
and one aiohttp session whose connector keeps a single keep-alive connection to the proxy on
loopback; the blocking methods drive that loop with ``run_until_complete`` from the calling
thread, so UbiOps' synchronous ``request()`` needs no extra thread and ``streaming_update`` is
called from the request thread itself.

What is forwarded is never re-serialised: a payload that arrives as JSON text is sent as that
text, a dict is ``json.dumps``'d once. Streamed chunks are relayed as the text of each SSE event
(no parse, no re-dump) and the final answer is those texts joined into a JSON list.

Every failure a user can cause or act on raises a :class:`PublicError` subclass whose
``public_error_message`` is what UbiOps shows as the request's error.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from proxy.catalog import Catalog, ModelKind, UnknownModelError
from proxy.config import Settings
from proxy.logs import get_logger

__all__ = [
    "InvalidRequestError",
    "Prepared",
    "ProxyClient",
    "ProxyUnavailableError",
    "PublicError",
    "Route",
    "SSEDecoder",
    "UpstreamError",
    "prepare",
]

log = get_logger("proxy.forwarder")

T = TypeVar("T")

StreamCallback = Callable[[str], object]

_DONE = "[DONE]"
_ERROR_MARKER = '"error"'
_READY_POLL_INITIAL = 0.05
_READY_POLL_MAX = 1.0
_READY_PROGRESS_EVERY = 10.0
_READY_PROBE_TIMEOUT = 5.0
_CONNECT_TIMEOUT = 10.0
_REDACTED = "[redacted]"
_TOO_DEEP = (
    "The request is nested too deeply to be an OpenAI request body (JSON nested hundreds of "
    "levels deep)."
)


class PublicError(Exception):
    """An error whose ``public_error_message`` UbiOps shows to the caller as the request error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.public_error_message = message


class InvalidRequestError(PublicError):
    """The request cannot be forwarded as it is: not JSON, no model, unknown model, wrong kind."""


class ProxyUnavailableError(PublicError):
    """The proxy is not reachable, not ready, or never became ready."""


class UpstreamError(PublicError):
    """The proxy answered with an error, before or in the middle of a stream."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Route(enum.Enum):
    """An OpenAI endpoint of the proxy, chosen by the field that carries the input."""

    CHAT = ("/v1/chat/completions", "messages", ModelKind.CHAT)
    COMPLETION = ("/v1/completions", "prompt", ModelKind.CHAT)
    EMBEDDING = ("/v1/embeddings", "input", ModelKind.EMBEDDING)

    def __init__(self, path: str, field: str, kind: ModelKind) -> None:
        self.path = path
        self.field = field
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request ready to forward: where to, the body bytes, and what was asked for."""

    route: Route
    body: bytes
    model: str
    stream: bool


def prepare(data: object, catalog: Catalog) -> Prepared:
    """Check a UbiOps request and pick its route; the body is the original text when given one.

    ``data`` is the request as UbiOps passes it to ``request()``: JSON text (plain input) or an
    already-parsed dict.

    Raises:
        InvalidRequestError: not JSON (or nested too deeply to parse, or not UTF-8), not an
            object, no model, unknown model, no or several input fields, or a model of the
            wrong kind for the input field.
    """
    payload: object
    if isinstance(data, str | bytes | bytearray):
        try:
            payload = json.loads(data)
            body = data.encode() if isinstance(data, str) else bytes(data)
        except RecursionError:
            raise InvalidRequestError(_TOO_DEEP) from None
        except UnicodeEncodeError:
            raise InvalidRequestError(
                "The request text is not valid UTF-8: it holds an unpaired surrogate character. "
                "Send the body as UTF-8 JSON."
            ) from None
        except ValueError as exc:
            raise InvalidRequestError(
                f"The request is not valid JSON ({exc}). Send an OpenAI request body, e.g. "
                '{"model": "<model>", "messages": [{"role": "user", "content": "Hi"}]}.'
            ) from None
    elif isinstance(data, Mapping):
        payload = data
        try:
            body = json.dumps(data).encode()
        except RecursionError:
            raise InvalidRequestError(_TOO_DEEP) from None
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"The request cannot be sent as JSON: {exc}.") from None
    else:
        raise InvalidRequestError(
            "The request must be a JSON object (an OpenAI request body), not "
            f"{type(data).__name__}."
        )
    if not isinstance(payload, Mapping):
        raise InvalidRequestError(
            f"The request must be a JSON object (an OpenAI request body), not a JSON "
            f"{_json_type(payload)}."
        )
    available = ", ".join(catalog.names) or "none are configured"
    model_name = payload.get("model")
    if not isinstance(model_name, str) or not model_name.strip():
        raise InvalidRequestError(
            f'The request has no "model" field (a model name). Available models: {available}.'
        )
    try:
        model = catalog.resolve(model_name)
    except UnknownModelError:
        raise InvalidRequestError(
            f"Model {model_name!r} is not served by this deployment. Available models: {available}."
        ) from None  # the catalog error repeats the name, which may hold anything
    present = [route for route in Route if route.field in payload]
    if not present:
        raise InvalidRequestError(
            'The request has none of "messages" (chat), "prompt" (completion) or "input" '
            f"(embedding); {model_name!r} is {_a(model.kind)} model, so send "
            f"{_fields_for(model.kind)}."
        )
    if len(present) > 1:
        fields = " and ".join(f'"{route.field}"' for route in present)
        raise InvalidRequestError(
            f"The request has both {fields}; send exactly one of them "
            '("messages" for chat, "prompt" for a completion, "input" for embeddings).'
        )
    route = present[0]
    if model.kind is not route.kind:
        raise InvalidRequestError(
            f'Model {model_name!r} is {_a(model.kind)} model and cannot answer a "{route.field}" '
            f"request; send {_fields_for(model.kind)}, or pick {_a(route.kind)} model: "
            f"{', '.join(_names_of_kind(catalog, route.kind)) or 'none are configured'}."
        )
    return Prepared(route=route, body=body, model=model_name, stream=payload.get("stream") is True)


class SSEDecoder:
    """Incremental Server-Sent Events decoder: bytes in, the data text of each event out.

    Follows the SSE rules that matter here: lines end in LF, CRLF or CR; ``data:`` lines are
    joined with LF; one leading space after the colon is dropped; comments and other fields are
    ignored; a blank line ends an event. The data text itself is never parsed.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> Iterator[str]:
        """Yield the data of every event completed by ``chunk``."""
        self._buffer += chunk
        while True:
            cut, skip = _line_end(self._buffer)
            if cut < 0:
                return
            line, self._buffer = self._buffer[:cut], self._buffer[cut + skip :]
            if not line:
                if self._data:
                    yield "\n".join(self._data)
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append((value[1:] if value.startswith(b" ") else value).decode())

    @property
    def pending(self) -> bool:
        """Whether an event was started but not finished (the stream ended mid-event)."""
        return bool(self._data or self._buffer.strip())


class ProxyClient:
    """One request process's link to the proxy: waits for readiness and forwards requests.

    The methods block the calling thread; calls from several threads are serialised. Create
    one per process (it owns an event loop) and :meth:`close` it when the process stops.
    """

    def __init__(self, settings: Settings, *, base_url: str | None = None) -> None:
        self._settings = settings
        self._base_url = (base_url or settings.local_proxy_url).rstrip("/")
        self._headers = {"Content-Type": "application/json"}
        if settings.proxy_api_key:
            self._headers["Authorization"] = f"Bearer {settings.proxy_api_key}"
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def base_url(self) -> str:
        return self._base_url

    def wait_ready(
        self, timeout: float | None = None, *, check: Callable[[], None] | None = None
    ) -> None:
        """Block until the proxy's ``/readyz`` reports ready; log progress while waiting.

        Polls with a capped backoff (no fixed sleep). ``check`` is called on every pass and may
        raise to abort the wait (process 0 uses it to stop waiting for a proxy that gave up).

        Raises:
            ProxyUnavailableError: not ready within ``timeout`` (default READY_TIMEOUT),
                saying what the proxy last reported.
        """
        limit = self._settings.ready_timeout if timeout is None else timeout
        self._run(self._wait_ready(limit, check))

    def forward(self, data: object, streaming_update: StreamCallback | None = None) -> str:
        """Send one UbiOps request to the proxy and return the answer as JSON text.

        A streamed answer calls ``streaming_update`` with each chunk's JSON text as it arrives
        and returns the JSON list of all chunks; any other answer is returned as received.

        Raises:
            PublicError: the request is invalid, the proxy is unavailable, or it answered with an
                error (also in the middle of a stream). Its message never holds a key of the
                proxy: UbiOps logs it, and errors quote the client's input (a model name).
        """
        try:
            prepared = prepare(data, self._settings.catalog)
            return self._run(self._forward(prepared, streaming_update))
        except PublicError as exc:
            self._redact(exc)
            raise

    def _redact(self, exc: PublicError) -> None:
        message = exc.public_error_message
        for secret in (self._settings.proxy_api_key, self._settings.proxy_admin_key):
            if secret and secret in message:
                message = message.replace(secret, _REDACTED)
        if message != exc.public_error_message:
            exc.public_error_message = message
            exc.args = (message, *exc.args[1:])

    def close(self) -> None:
        """Close the connection and the event loop; the client is unusable afterwards."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._session is not None:
                self._loop.run_until_complete(self._session.close())
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._closed:
                coro.close()
                raise ProxyUnavailableError("This deployment process is shutting down.")
            return self._loop.run_until_complete(coro)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # One pooled keep-alive connection: a process serves one request at a time.
            connector = aiohttp.TCPConnector(limit=1)
            self._session = aiohttp.ClientSession(
                base_url=self._base_url,
                connector=connector,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=_CONNECT_TIMEOUT,
                    sock_read=self._settings.proxy_request_timeout + 30.0,
                ),
            )
        return self._session

    async def _wait_ready(self, limit: float, check: Callable[[], None] | None) -> None:
        session = self._get_session()
        start = time.monotonic()
        deadline = start + limit
        next_report = start + _READY_PROGRESS_EVERY
        delay = _READY_POLL_INITIAL
        last = "no answer yet"
        log.info("waiting for the proxy", url=self._base_url, timeout_s=limit)
        while True:
            if check is not None:
                check()
            ready, last, snapshot = await self._probe(session)
            now = time.monotonic()
            if ready:
                log.info("proxy ready", waited_s=round(now - start, 2), **_ready_summary(snapshot))
                return
            failure = _ollama_failure(snapshot)
            if failure is not None:
                raise ProxyUnavailableError(
                    f"The model server cannot start Ollama: {failure}. See the deployment logs."
                )
            if now >= deadline:
                raise ProxyUnavailableError(
                    f"The model server did not become ready within {limit:g} s "
                    f"(READY_TIMEOUT); last status: {last}. See the deployment logs."
                )
            if now >= next_report:
                log.info("still waiting for the proxy", waited_s=round(now - start), status=last)
                next_report = now + _READY_PROGRESS_EVERY
            await asyncio.sleep(min(delay, max(deadline - now, 0.0)))
            delay = min(delay * 2, _READY_POLL_MAX)

    async def _probe(self, session: aiohttp.ClientSession) -> tuple[bool, str, dict[str, Any]]:
        try:
            async with session.get(
                "/readyz", timeout=aiohttp.ClientTimeout(total=_READY_PROBE_TIMEOUT)
            ) as resp:
                raw = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return False, f"not reachable ({_describe(exc)})", {}
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return False, f"HTTP {resp.status} with an unexpected body", {}
        if resp.status == 200 or _serving_despite_failures(body):
            return True, "ready", body
        return False, _status_text(body), body

    async def _forward(self, prepared: Prepared, streaming_update: StreamCallback | None) -> str:
        resp = await self._send(prepared)
        async with resp:
            try:
                return await self._answer(resp, streaming_update)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
                raise UpstreamError(
                    f"The connection to the model server was lost while it answered "
                    f"({_describe(exc)}); the answer is incomplete. Retry the request."
                ) from None

    async def _send(self, prepared: Prepared) -> aiohttp.ClientResponse:
        session = self._get_session()
        for attempt in (1, 2):
            try:
                return await session.post(prepared.route.path, data=prepared.body)
            except aiohttp.ServerDisconnectedError:
                # A pooled connection that the proxy closed (it restarted) fails before any
                # answer: send once more, on a fresh connection.
                if attempt == 2:
                    break
                log.info("proxy connection was closed; retrying once", model=prepared.model)
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                raise ProxyUnavailableError(
                    f"The model server at {self._base_url} is not reachable ({_describe(exc)}); "
                    "it may be restarting, retry in a few seconds."
                ) from None
        raise ProxyUnavailableError(
            "The model server closed the connection without answering (it may be restarting); "
            "retry in a few seconds."
        )

    async def _answer(
        self, resp: aiohttp.ClientResponse, streaming_update: StreamCallback | None
    ) -> str:
        if resp.status >= 400:
            raw = await resp.read()
            raise UpstreamError(_error_text(raw, resp.status), resp.status)
        if resp.content_type != "text/event-stream":
            return (await resp.read()).decode()
        chunks: list[str] = []
        decoder = SSEDecoder()
        async for piece in resp.content.iter_any():
            for text in decoder.feed(piece):
                if text == _DONE:
                    return "[" + ",".join(chunks) + "]"
                if _ERROR_MARKER in text:
                    message = _stream_error(text)
                    if message is not None:
                        raise UpstreamError(
                            f"The answer failed after {len(chunks)} chunks: {message}"
                        )
                chunks.append(text)
                if streaming_update is not None:
                    streaming_update(text)
        raise UpstreamError(
            f"The model server ended the stream early, after {len(chunks)} chunks and without "
            "[DONE]; the answer is incomplete. Retry the request."
        )


def _line_end(buffer: bytes) -> tuple[int, int]:
    """Index and length of the first line ending in ``buffer`` (-1 when none is complete)."""
    lf, cr = buffer.find(b"\n"), buffer.find(b"\r")
    if cr < 0 or (0 <= lf < cr):
        return lf, 1
    if cr == len(buffer) - 1:
        return -1, 0  # a CR at the end may be the first half of CRLF: wait for more
    return cr, 2 if buffer[cr + 1 : cr + 2] == b"\n" else 1


def _stream_error(text: str) -> str | None:
    """The message of an SSE event that reports an error, or None for an ordinary chunk."""
    try:
        event = json.loads(text)
    except ValueError:
        return None
    if not isinstance(event, dict) or "error" not in event:
        return None
    return _message_of(event["error"])


def _error_text(raw: bytes, status: int) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    message = _message_of(body.get("error")) if isinstance(body, dict) else None
    if message is None:
        message = raw.decode(errors="replace").strip()[:500] or "no details given"
    if status < 500:
        return f"{message} (HTTP {status})"
    retry = "; retry in a few seconds" if status in (502, 503, 504) else ""
    return f"The model server could not answer: {message} (HTTP {status}){retry}."


def _message_of(error: object) -> str:
    if isinstance(error, dict):
        message = error.get("message")
        return str(message) if message else json.dumps(error)
    return str(error)


def _serving_despite_failures(body: Mapping[str, Any]) -> bool:
    """A degraded instance whose Ollama is up and whose models all settled still serves."""
    ollama = body.get("ollama")
    models = body.get("models")
    if body.get("status") != "degraded" or not isinstance(ollama, dict):
        return False
    if ollama.get("state") != "up" or not isinstance(models, dict):
        return False
    states = {m.get("state") for m in models.values() if isinstance(m, dict)}
    return bool(states) and states <= {"ready", "present", "failed"} and states != {"failed"}


def _ollama_failure(body: Mapping[str, Any]) -> str | None:
    """Ollama's reason when the proxy gave up on it for good (it keeps serving /readyz)."""
    ollama = body.get("ollama")
    if not isinstance(ollama, dict) or ollama.get("state") != "failed":
        return None
    return str(ollama.get("reason") or "it failed")


def _status_text(body: Mapping[str, Any]) -> str:
    parts = [str(body.get("status", "unknown"))]
    models = body.get("models")
    if isinstance(models, dict):
        busy = [
            f"{tag} {info.get('state')}"
            + (f" {info['progress']:.0%}" if isinstance(info.get("progress"), float) else "")
            for tag, info in models.items()
            if isinstance(info, dict) and info.get("state") not in ("ready", "present")
        ]
        if busy:
            parts.append("; ".join(busy))
    return ": ".join(parts)


def _ready_summary(body: Mapping[str, Any]) -> dict[str, Any]:
    models = body.get("models")
    if not isinstance(models, dict):
        return {}
    failed = [
        tag for tag, m in models.items() if isinstance(m, dict) and m.get("state") == "failed"
    ]
    return {"models": len(models), "failed": failed} if failed else {"models": len(models)}


def _describe(exc: BaseException) -> str:
    """A short reason for a connection failure: the OS error when there is one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TimeoutError):
            return "timed out"
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno).lower()
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _a(kind: ModelKind) -> str:
    return f"an {kind}" if kind is ModelKind.EMBEDDING else f"a {kind}"


def _fields_for(kind: ModelKind) -> str:
    if kind is ModelKind.EMBEDDING:
        return '"input" (embeddings)'
    return '"messages" (chat) or "prompt" (completion)'


def _names_of_kind(catalog: Catalog, kind: ModelKind) -> list[str]:
    return [m.configured_as for m in catalog if m.kind is kind]
