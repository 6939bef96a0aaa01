"""The request processes' client of the instance's proxy.

Every UbiOps request process owns one :class:`ProxyClient`: a private asyncio loop and one
keep-alive connection to the proxy on loopback, driven from the calling thread, so UbiOps'
synchronous ``request()`` needs no extra thread and ``streaming_update`` runs on the request
thread. The client is thin on purpose: it sends each request where :mod:`proxy.ubiops_request`
routes it and relays the answer. The proxy alone resolves models, checks kinds and fields and
words the errors; its error message becomes the ``public_error_message``, so a request is judged
the same through UbiOps as through the proxy's port.

Start-up: :meth:`ProxyClient.wait_started` waits only while the wait is short, and until the
proxy was seen serving every request asks first and fails at once with the reason
(:mod:`proxy.startup`).
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from proxy import startup
from proxy.config import Settings
from proxy.logs import get_logger
from proxy.state import Readiness
from proxy.ubiops_request import (
    ProxyUnavailableError,
    PublicError,
    RequestFailedError,
    StreamCallback,
    body_of,
    error_message,
    relay_events,
    route,
)

__all__ = ["ProxyClient"]

log = get_logger(__name__)

T = TypeVar("T")

_READY_PROBE_TIMEOUT = aiohttp.ClientTimeout(total=5.0)
_STALE_CONNECTION = aiohttp.ClientOSError
"""What writing to a pooled connection the proxy closed raises ("Can not write request body")."""
_CONNECT_TIMEOUT = 10.0
_REDACTED = "[redacted]"


class ProxyClient:
    """One request process's link to the proxy: waits for readiness and forwards requests.

    The methods block the calling thread; calls from several threads are serialised. Create one
    per process (it owns an event loop) and :meth:`close` it when the process stops; one that is
    never closed (``ubiops.utils.run_local`` calls no ``stop()``) is closed when it is collected
    or the interpreter exits.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._base_url = settings.local_proxy_url
        self._secrets = [key for key in (settings.proxy_api_key, settings.proxy_admin_key) if key]
        self._headers = {"Content-Type": "application/json"}
        if settings.proxy_api_key:
            self._headers["Authorization"] = f"Bearer {settings.proxy_api_key}"
        self._lock = threading.Lock()
        self._link = _Link(asyncio.new_event_loop())
        self._release = weakref.finalize(self, self._link.close)
        self._closed = False
        self._check: Callable[[], None] | None = None
        self._served = False

    def wait_started(self, check: Callable[[], None] | None = None) -> str:
        """Block while starting up is quick (:func:`~proxy.startup.wait_started`, within
        ``min(READY_TIMEOUT, STARTUP_WAIT)``); return how it ended, as one line for the log.

        ``check`` is called before every probe, here and by requests until the proxy serves,
        and may raise to end the wait (process 0 passes its launcher's: the proxy will not run).

        Raises:
            ProxyUnavailableError: Ollama failed for good.
        """
        self._check = check
        limit = min(self._settings.ready_timeout, startup.STARTUP_WAIT)
        log.info("waiting for the proxy to start", url=self._base_url, up_to_s=limit)
        self._served, outcome = self._run(startup.wait_started(self._probe, limit))
        return outcome

    def forward(self, data: object, streaming_update: StreamCallback | None = None) -> str:
        """Send one UbiOps request to the proxy and return the answer as JSON text.

        A streamed answer calls ``streaming_update`` with each chunk's JSON text as it arrives
        and returns the JSON list of the chunks; any other answer is returned as received.

        Raises:
            PublicError: the proxy is unavailable, or it refused or failed the request. The
                message never holds a key of the proxy: UbiOps logs it.
        """
        try:
            return self._run(self._forward(body_of(data), streaming_update))
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
            self._release()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._closed:
                coro.close()
                raise ProxyUnavailableError("This deployment process is shutting down.")
            return self._link.loop.run_until_complete(coro)

    def _get_session(self) -> aiohttp.ClientSession:
        """The session, made on first use inside the loop; one keep-alive connection."""
        if self._link.session is None:
            self._link.session = aiohttp.ClientSession(
                base_url=self._base_url,
                connector=aiohttp.TCPConnector(limit=1),
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(
                    connect=_CONNECT_TIMEOUT, sock_read=self._settings.proxy_request_timeout + 30.0
                ),
            )
        return self._link.session

    async def _probe(self) -> Readiness:
        if self._check is not None:
            self._check()
        async with self._get_session().get("/readyz", timeout=_READY_PROBE_TIMEOUT) as resp:
            return Readiness.from_json(await resp.json(content_type=None))

    async def _forward(self, body: bytes, streaming_update: StreamCallback | None) -> str:
        if not self._served:
            await startup.require_serving(self._probe)
            self._served = True
        session = self._get_session()
        routed = route(body, self._settings.catalog)
        for attempt in (1, 2):
            try:
                resp = await session.post(routed.endpoint.path, data=routed.body)
                break
            except (aiohttp.ServerDisconnectedError, _STALE_CONNECTION) as exc:
                # A pooled connection the proxy closed (it restarted): once more, fresh. (Not a
                # refused connection: that is a ClientConnectorError, reported below.)
                if isinstance(exc, aiohttp.ClientConnectorError):
                    raise ProxyUnavailableError(
                        f"The model server at {self._base_url} is not reachable "
                        f"({_describe(exc)}); it may be restarting, retry in a few seconds."
                    ) from None
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
                    raise RequestFailedError(error_message(await resp.read()), resp.status)
                if resp.content_type != "text/event-stream":
                    return (await resp.read()).decode()
                return await relay_events(resp, routed.endpoint.events, streaming_update)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as e:
                raise RequestFailedError(
                    f"The connection to the model server was lost while it answered "
                    f"({_describe(e)}); the answer is incomplete. Retry the request."
                ) from None


@dataclass
class _Link:
    """A client's event loop and its session to the proxy (made on first use)."""

    loop: asyncio.AbstractEventLoop
    session: aiohttp.ClientSession | None = None

    def close(self) -> None:
        """Close the session, then the loop. Runs from any thread: a garbage collection inside
        another event loop (an async program's) gets the closing done in a thread of its own."""
        if self.session is not None:
            closing = self.session.close()
            if _loop_running_here():
                worker = threading.Thread(target=self.loop.run_until_complete, args=(closing,))
                worker.start()
                worker.join()
            else:
                self.loop.run_until_complete(closing)
        self.loop.close()


def _loop_running_here() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


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
