"""Relay an Ollama response to the client as it arrives: streams (SSE, NDJSON) and whole bodies.

Every body is relayed as bytes: each piece read from Ollama is written to the client as it comes
(``StreamResponse.write`` drains, so a slow client slows the reads: backpressure), never parsed
or re-serialised, so the proxy holds at most one piece per request whatever the answer's size.
Per piece the relay does one read, one write and a few counter updates.

Failure handling:

* Before the first piece nothing is committed, so a timeout or a dropped connection becomes a
  proper 504/503 response.
* After it, the status is sent. For a stream, an upstream failure (connection reset, cut, Ollama
  dying, no data for ``PROXY_REQUEST_TIMEOUT``) is written in the stream's own framing (an SSE
  ``data:`` event with an ``error`` object and no ``[DONE]``; an NDJSON ``{"error": ...}`` line)
  and the response ends cleanly, so clients raise instead of mistaking the truncation for
  success. A whole body cut short has no framing to say so: the client's connection is dropped.
* A stream that ends cleanly but incomplete (SSE without ``data: [DONE]``, NDJSON whose last line
  is neither ``"done": true`` nor an in-band ``{"error"}``) is a failure too. Only the tail of the
  last two pieces is examined, once, at the end.
* A client that goes away (the handler task is cancelled: the app sets ``handler_cancellation``;
  or a write fails) closes the upstream response at once, which closes its connection, so Ollama
  stops generating. A client that stops *reading* is cut off the same way once one write has
  waited ``PROXY_CLIENT_TIMEOUT`` (:class:`_StallWatch`), so it cannot hold a slot forever.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from proxy.access_log import Exchange
from proxy.appkeys import SETTINGS
from proxy.endpoints import Framing
from proxy.errors import stream_error_frame
from proxy.logs import get_logger
from proxy.upstream import connection_failure, timeout_error, unreachable
from proxy.usage import TAIL as USAGE_TAIL
from proxy.usage import UsageChunkFilter, usage_in

__all__ = ["relay"]

log = get_logger(__name__)

_SSE = "text/event-stream"
_NDJSON = "application/x-ndjson"
_SSE_DONE = b"data: [DONE]"
_TAIL = 64
_STALL_CHECKS = 4
"""How many times per ``PROXY_CLIENT_TIMEOUT`` a pending write is looked at."""
_LAST_EVENTS = {
    Framing.SSE_RESPONSES: frozenset(
        {b"response.completed", b"response.failed", b"response.incomplete", b"error"}
    ),
    Framing.SSE_ANTHROPIC: frozenset({b"message_stop", b"error"}),
}
"""The events a stream of named events may properly end with, by framing."""
_EVENT = b"\nevent:"
"""An ``event:`` line: only at a line's start (JSON data never holds a raw newline)."""


async def relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    exchange: Exchange,
    *,
    client_timeout: aiohttp.ClientTimeout,
    events: Framing = Framing.SSE,
    check_end: bool = True,
    count_usage: bool = False,
    hide_usage: bool = False,
    rename: tuple[bytes, bytes] | None = None,
) -> web.StreamResponse:
    """Relay ``upstream`` (headers read) to the client; always releases or closes ``upstream``.

    SSE and NDJSON bodies are relayed as streams; anything else keeps its status, content type
    and length. ``events`` says how the endpoint frames its server-sent events (how they end,
    how an error is reported). ``check_end`` enables the truncation check for streams (model
    routes: on; pulls, whose NDJSON has no ``done`` line: off). ``count_usage`` reads the token
    counts from the answer's end into ``exchange.usage``; ``hide_usage`` takes an OpenAI stream's
    usage-only chunk out (the proxy asked for it, the client did not); ``rename`` replaces the
    bytes of its first item with its second in every piece (the model as the client named it).

    Raises:
        UpstreamTimeoutError: Ollama went silent before the first piece.
        UpstreamUnavailableError: Ollama dropped the connection before the first piece.
    """
    content_type = upstream.headers.get("Content-Type", "application/octet-stream")
    if content_type.startswith(_SSE):
        framing: Framing | None = events
    elif content_type.startswith(_NDJSON):
        framing = Framing.NDJSON
    else:
        framing = None
    readany = upstream.content.readany
    chunk = await _read_uncommitted(readany, upstream, client_timeout)
    headers = {"Content-Type": content_type, "X-Request-ID": exchange.request_id}
    if framing is not None:
        headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response = web.StreamResponse(status=upstream.status, headers=headers)
    if framing is None and upstream.content_length is not None and rename is None:
        response.content_length = upstream.content_length
    watch = _StallWatch(request, exchange, request.app[SETTINGS].proxy_client_timeout)
    named = _LastEvent() if framing in _LAST_EVENTS else None
    hidden = UsageChunkFilter() if hide_usage and framing is Framing.SSE else None
    failure: str | None = None
    prev = last = b""
    chunks = size = 0

    def delivered() -> bool:
        """Record a stream whose proper end the client was sent as answered, and say whether
        it was: a client may close as soon as it reads the end (the ``openai`` client does at
        ``[DONE]``), before Ollama's own end of body is read."""
        if framing is None or not check_end:
            return False
        if named is not None:
            ended = named.incomplete(_LAST_EVENTS[framing]) is None
        else:
            ended = _incomplete_end(framing, prev, last) is None
        if ended:
            exchange.status = upstream.status
            if count_usage and exchange.usage is None:
                exchange.usage = usage_in(hidden.taken if hidden else (prev + last)[-USAGE_TAIL:])
        return ended

    try:
        await response.prepare(request)
        exchange.committed = True
        if framing is not None:
            exchange.first_chunk_at = time.perf_counter()
        write = response.write
        while chunk:
            watch.since = time.monotonic()
            out = chunk if rename is None else chunk.replace(*rename)
            await write(out if hidden is None else hidden.feed(out))
            watch.since = 0.0
            chunks += 1
            size += len(chunk)
            prev = last
            last = chunk
            if named is not None:
                named.feed(chunk)
            try:
                chunk = await readany()
            except TimeoutError:
                failure = (
                    f"Ollama sent nothing for {client_timeout.sock_read:g} s; the stream is cut"
                )
                break
            except aiohttp.ClientError as exc:
                failure = f"the connection to Ollama failed mid-stream: {connection_failure(exc)}"
                break
        if failure is None and check_end and framing is not None:
            if named is not None:
                failure = named.incomplete(_LAST_EVENTS[framing])
            else:
                failure = _incomplete_end(framing, prev, last)
        if failure is None:
            upstream.release()
            if count_usage:
                exchange.usage = usage_in(hidden.taken if hidden else (prev + last)[-USAGE_TAIL:])
            await response.write_eof(hidden.flush() if hidden else b"")
        else:
            upstream.close()
            exchange.error = failure
            log.warning("upstream answer failed", error=failure, chunks=chunks)
            if framing is None:  # nothing can say so in-band: drop the client's connection
                if request.transport is not None:
                    request.transport.abort()
            else:
                await write(_terminate(framing, prev, last) + stream_error_frame(framing, failure))
                await response.write_eof()
    except ConnectionError:
        # The client went away (a write to a closing transport); stop Ollama by closing.
        upstream.close()
        if not delivered():
            exchange.error = exchange.error or "client disconnected"
            exchange.status = 499
            log.info("client disconnected mid-answer", chunks=chunks)
    except asyncio.CancelledError:
        upstream.close()  # the client is gone: drop the upstream connection now
        delivered()
        raise
    except BaseException:
        upstream.close()  # a bug: drop the upstream connection now
        raise
    finally:
        watch.stop()
        exchange.chunks, exchange.bytes = chunks, size
    return response


class _StallWatch:
    """Drops a client's connection once one write to it has waited ``limit`` seconds.

    Set :attr:`since` (``time.monotonic()``) before a write and back to 0 after it: the cost per
    piece is two assignments; a timer looks a few times per ``limit``. Dropping the connection
    cancels the handler (``handler_cancellation``), which closes the upstream and frees the slot.
    """

    __slots__ = ("_exchange", "_handle", "_interval", "_limit", "_request", "since")

    def __init__(self, request: web.Request, exchange: Exchange, limit: float) -> None:
        self._request = request
        self._exchange = exchange
        self._limit = limit
        self._interval = limit / _STALL_CHECKS
        self.since = 0.0
        self._handle = asyncio.get_running_loop().call_later(self._interval, self._look)

    def _look(self) -> None:
        since = self.since
        if since and time.monotonic() - since >= self._limit:
            self._exchange.error = f"the client read nothing for {self._limit:g} s; cut off"
            log.info("client stopped reading; cutting it off", seconds=self._limit)
            if self._request.transport is not None:
                self._request.transport.abort()
            return
        self._handle = asyncio.get_running_loop().call_later(self._interval, self._look)

    def stop(self) -> None:
        self._handle.cancel()


async def _read_uncommitted(
    read: Callable[[], Awaitable[bytes]],
    upstream: aiohttp.ClientResponse,
    client_timeout: aiohttp.ClientTimeout,
) -> bytes:
    """A read made before anything is sent to the client, so a failure gets a real status.

    Raises:
        UpstreamTimeoutError: Ollama went silent.
        UpstreamUnavailableError: Ollama dropped the connection.
    """
    try:
        return await read()
    except TimeoutError as exc:
        upstream.close()
        raise timeout_error(client_timeout) from exc
    except aiohttp.ClientError as exc:
        upstream.close()
        raise unreachable(exc) from exc
    except BaseException:
        upstream.close()
        raise


class _LastEvent:
    """The name of the last ``event:`` line of a stream, seen piece by piece.

    A line cut between two pieces is found on the next one: a short tail of each piece is kept.
    """

    __slots__ = ("_tail", "name")

    def __init__(self) -> None:
        self._tail = b"\n"  # the stream's start is a line's start
        self.name: bytes | None = None

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk
        start = data.rfind(_EVENT)
        if start >= 0:
            start += len(_EVENT)
            end = data.find(b"\n", start)
            if end >= 0:
                self.name = data[start:end].strip()
        self._tail = data[-_TAIL:]

    def incomplete(self, proper_ends: frozenset[bytes]) -> str | None:
        """Why the stream's end is not a proper one, or None when it is."""
        if self.name in proper_ends:
            return None
        return "the stream from Ollama ended before its final event"


def _incomplete_end(framing: Framing, prev: bytes, last: bytes) -> str | None:
    """Why a cleanly ended stream is incomplete, or None when its end is a proper one."""
    if framing is Framing.SSE:
        tail = last[-_TAIL:] if len(last) >= _TAIL else (prev + last)[-_TAIL:]
        if _SSE_DONE in tail:
            return None
        line = _last_line(prev, last)
        message = _upstream_error(line.removeprefix(b"data:").strip()) if line else None
        return message or "the stream from Ollama ended before its [DONE] event"
    line = _last_line(prev, last)
    if line is None:
        return "the stream from Ollama ended without any data"
    try:
        obj = json.loads(line)
    except ValueError:
        # A last line longer than the two chunks kept cannot be checked cheaply: accept one that
        # ends like a complete JSON object (real cuts raise a payload error before this point).
        if not line.startswith(b"{") and line.endswith(b"}"):
            return None
        return "the stream from Ollama ended in the middle of a line"
    if isinstance(obj, dict) and (obj.get("done") is True or "error" in obj):
        return None
    return "the stream from Ollama ended before its final (done) message"


def _last_line(prev: bytes, last: bytes) -> bytes | None:
    """The last non-empty line of the stream, looking at most at its last two chunks."""
    data = last.rstrip(b"\r\n")
    cut = data.rfind(b"\n")
    if cut < 0 and prev:
        data = (prev + last).rstrip(b"\r\n")
        cut = data.rfind(b"\n")
    line = data[cut + 1 :].strip()
    return line or None


def _upstream_error(data: bytes | None) -> str | None:
    """The message of an ``{"error": ...}`` document Ollama wrote in-band, if ``data`` is one."""
    if not data or not data.startswith(b"{"):
        return None
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    error = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return f"Ollama reported an error: {error}" if isinstance(error, str) and error else None


def _terminate(framing: Framing, prev: bytes, last: bytes) -> bytes:
    """Bytes that end a partly written line or event, so the error frame stands on its own."""
    if framing is Framing.NDJSON:
        return b"" if not last or last.endswith(b"\n") else b"\n"
    tail = (prev + last)[-2:] if len(last) < 2 else last[-2:]
    if not tail or tail == b"\n\n":
        return b""
    return b"\n" if tail.endswith(b"\n") else b"\n\n"
