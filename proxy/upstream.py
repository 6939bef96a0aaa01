"""The one pooled keep-alive HTTP client to the supervised Ollama, and its timeouts.

:class:`Upstream` owns a single :class:`aiohttp.ClientSession` for the life of the application
(opened and closed by :func:`upstream_context` in ``app.cleanup_ctx``). :meth:`Upstream.send`
turns transport failures into the proxy's typed errors: a timeout becomes
:class:`UpstreamTimeoutError` (504), a refused or dropped connection
:class:`UpstreamUnavailableError` (503). The caller owns the returned response and must
``release()`` or ``close()`` it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from proxy.errors import UpstreamTimeoutError, UpstreamUnavailableError
from proxy.logs import get_logger

__all__ = ["Upstream", "connection_failure", "timeout_error", "unreachable", "upstream_context"]

log = get_logger(__name__)

_CONNECT_TIMEOUT = 10.0
_KEEPALIVE = 30.0
_META_TIMEOUT = 30.0
_BRIEF_TIMEOUT = 2.0


class Upstream:
    """The pooled client to Ollama at ``base_url``.

    Args:
        base_url: Ollama's base URL (``Settings.ollama_url``).
        request_timeout: ``PROXY_REQUEST_TIMEOUT``: the total time of a non-streamed request, and
            the longest silence between two chunks of a streamed one.
        connections: the most connections open to Ollama at once (the pool's bound).
    """

    def __init__(self, base_url: str, *, request_timeout: float, connections: int = 100) -> None:
        self.base_url = URL(base_url)
        self.request_timeout = request_timeout
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}
        self.whole = aiohttp.ClientTimeout(total=request_timeout, sock_connect=_CONNECT_TIMEOUT)
        """Timeout of a request whose answer is read whole."""
        self.stream = aiohttp.ClientTimeout(
            total=None, sock_connect=_CONNECT_TIMEOUT, sock_read=request_timeout
        )
        """Timeout of a stream: no total, but at most ``request_timeout`` between two reads."""
        self.meta = aiohttp.ClientTimeout(
            total=min(request_timeout, _META_TIMEOUT), sock_connect=_CONNECT_TIMEOUT
        )
        """Timeout of a quick metadata request (tags, ps, version, show)."""
        self.unbounded = aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_TIMEOUT)
        """Timeout of a management request (a pull may take an hour)."""
        self.brief = aiohttp.ClientTimeout(total=_BRIEF_TIMEOUT)
        """Timeout of a best-effort lookup that must not hold up its answer (listings)."""

    async def start(self) -> None:
        """Open the session (idempotent)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections, keepalive_timeout=_KEEPALIVE)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"Accept-Encoding": "identity"},
                skip_auto_headers=("User-Agent",),
                trust_env=False,
            )

    async def close(self) -> None:
        """Close the session and every pooled connection."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def url(self, path: str) -> URL:
        """The absolute URL of ``path`` on Ollama (cached: the proxy uses a few fixed paths)."""
        url = self._urls.get(path)
        if url is None:
            url = self.base_url.with_path(path)
            if len(self._urls) < 256:
                self._urls[path] = url
        return url

    async def send(
        self,
        method: str,
        path: str,
        *,
        client_timeout: aiohttp.ClientTimeout,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """Send one request to Ollama and return its response (headers read, body not).

        A request whose body is ``bytes`` (or absent) is sent again once if a pooled keep-alive
        connection turns out to be dead (Ollama restarted since it was last used).

        Raises:
            UpstreamTimeoutError: no answer within ``client_timeout``.
            UpstreamUnavailableError: Ollama refused or dropped the connection.
        """
        session = self._session
        if session is None:
            raise UpstreamUnavailableError(
                "the proxy is still starting; retry in a moment", retry_after=1
            )
        url = self.url(path)
        retry = data is None or isinstance(data, bytes)
        while True:
            try:
                return await session.request(
                    method, url, data=data, headers=headers, params=params, timeout=client_timeout
                )
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionResetError) as exc:
                if retry:
                    retry = False
                    log.debug("stale upstream connection; retrying once", error=str(exc))
                    continue
                log.warning("ollama unreachable", error=str(exc))
                raise unreachable(exc) from exc
            except TimeoutError as exc:
                raise timeout_error(client_timeout) from exc
            except aiohttp.ClientError as exc:
                log.warning("ollama unreachable", error=str(exc))
                raise unreachable(exc) from exc


def timeout_error(limits: aiohttp.ClientTimeout) -> UpstreamTimeoutError:
    """The 504 error for an upstream request that exceeded ``limits``."""
    if limits.total is not None:
        return UpstreamTimeoutError(f"Ollama did not answer within {limits.total:g} s")
    return UpstreamTimeoutError(f"Ollama sent nothing for {limits.sock_read:g} s")


def unreachable(exc: BaseException) -> UpstreamUnavailableError:
    """The 503 error for an Ollama that refused or dropped the connection."""
    return UpstreamUnavailableError(
        f"the Ollama server is not reachable: {connection_failure(exc)}", retry_after=2
    )


def connection_failure(exc: BaseException) -> str:
    """What went wrong with a connection to Ollama, in a few words fit for a client.

    Never the exception's own text: aiohttp's names Ollama's internal address.
    """
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the response ended before it was complete"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "it closed the connection"
    if isinstance(exc, TimeoutError):
        return "it timed out"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno).lower()
        cause = getattr(cause, "os_error", None) or cause.__cause__
    return "the connection failed"


def upstream_context(upstream: Upstream) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry that opens ``upstream`` at startup and closes it at cleanup."""

    async def context(_app: web.Application) -> AsyncIterator[None]:
        await upstream.start()
        try:
            yield
        finally:
            await upstream.close()

    return context
