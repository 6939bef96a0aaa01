"""Streamed inference responses, with the stream faults (cut, in-band error, crash) applied."""

from __future__ import annotations

from aiohttp import web

from .runtime import Simulator

__all__ = ["ChunkStream", "StreamAborted", "drop_connection", "open_stream"]


class StreamAborted(Exception):
    """The connection was dropped on purpose (``SIM_STREAM_CUT_AFTER``)."""


def drop_connection(request: web.Request) -> None:
    """Close the client connection after flushing what was written; no terminating chunk."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def open_stream(request: web.Request, content_type: str) -> web.StreamResponse:
    """Send the 200 headers of a chunked stream."""
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)
    return response


class ChunkStream:
    """Writes one chunk (an NDJSON line or an SSE event) at a time and applies stream faults."""

    def __init__(
        self, request: web.Request, response: web.StreamResponse, sim: Simulator, crash: bool
    ) -> None:
        self._request = request
        self._response = response
        self._sim = sim
        self._crash = crash
        self._cut_after = sim.faults.stream_cut_after
        self._error_after = sim.faults.stream_error_after
        self.sent = 0

    @property
    def failing(self) -> bool:
        """Whether the next chunk must be the mid-stream failure (``SIM_STREAM_ERROR_AFTER``)."""
        return self._error_after is not None and self.sent >= self._error_after

    async def send(self, data: bytes) -> None:
        """Write one chunk.

        Raises:
            StreamAborted: the stream was cut (``SIM_STREAM_CUT_AFTER``); the connection is closed.
        """
        if self._cut_after is not None and self.sent >= self._cut_after:
            self._cut()
        await self._response.write(data)
        self.sent += 1
        if self._crash:
            self._sim.crash()
        if self._cut_after is not None and self.sent >= self._cut_after:
            self._cut()

    async def finish(self) -> None:
        """End the stream cleanly (terminating chunk)."""
        await self._response.write_eof()

    def _cut(self) -> None:
        drop_connection(self._request)
        raise StreamAborted
