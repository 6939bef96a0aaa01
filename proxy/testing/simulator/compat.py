"""What Ollama's compatibility APIs share: the loop of their response writers.

Ollama serves the OpenAI, Responses and Anthropic APIs with middleware that translates each
request into a native chat or generate request, lets the native handler run, and rewrites every
native response object through a writer of its API (``ChatWriter``, ``ResponsesWriter``,
``AnthropicWriter``). Each API module here has such a writer (:class:`ApiWriter`); :func:`answer`
runs a plan through it, whole or streamed as server-sent events, with the stream faults applied
where the native stream would have them:

* ``SIM_STREAM_ERROR_AFTER=0``: the runner fails before the first token, so the handler answers
  HTTP 500, which the writer turns into its API's error body;
* ``SIM_STREAM_ERROR_AFTER=K``: after K events (at a token's boundary) the native in-band error
  line reaches the writer, which makes of it what :meth:`ApiWriter.failure` says (an empty chunk
  for chat completions, nothing at all for Responses and Anthropic), then the stream ends cleanly;
* ``SIM_STREAM_CUT_AFTER`` and ``SIM_CRASH_AFTER`` cut the connection (see
  :class:`~proxy.testing.simulator.wire.ChunkStream`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from aiohttp import web

from .inference import Finished, Immediate, Run
from .runtime import SIMULATOR
from .wire import ApiError, ChunkStream, StreamAborted, encoded_response, open_stream

__all__ = ["RUNNER_FAILED", "ApiWriter", "answer", "events"]

RUNNER_FAILED = "an error was encountered while running the model: unexpected EOF"
"""What Ollama reports when its model runner dies during a generation."""


class ApiWriter(Protocol):
    """One API's view of a generation (Ollama's ``*Writer`` types)."""

    def whole(self, text: str, final: Finished) -> Any:
        """The non-streamed response body for the joined ``text``."""

    def chunks(self, event: str | Finished) -> list[bytes]:
        """The SSE events for one native chunk: a token, or the final one."""

    def failure(self) -> list[bytes]:
        """The SSE events the writer makes of a native in-band ``{"error"}`` line."""


async def events(plan: Run | Immediate) -> AsyncIterator[str | Finished]:
    """A plan's native chunks; a load-only plan is a lone final chunk with zero counts."""
    if isinstance(plan, Run):
        async for event in plan.events():
            yield event
    else:
        yield Finished(plan.done_reason)


async def answer(
    request: web.Request,
    plan: Run | Immediate,
    writer: ApiWriter,
    stream: bool,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """The whole response, or its events as a stream with the stream faults applied.

    ``headers`` are the stream's extra headers (the Responses and Anthropic middlewares add
    ``Cache-Control`` and ``Connection``).

    Raises:
        ApiError: 500 when the runner fails before the first token (``SIM_STREAM_ERROR_AFTER=0``).
    """
    try:
        if not stream:
            parts: list[str] = []
            async for event in events(plan):
                if isinstance(event, Finished):
                    return encoded_response(writer.whole("".join(parts), event))
                parts.append(event)
            raise AssertionError("a plan always ends with Finished")
        sim = request.app[SIMULATOR]
        if isinstance(plan, Run) and sim.faults.stream_error_after == 0:
            raise ApiError(500, RUNNER_FAILED)
        response = await open_stream(request, "text/event-stream", headers)
        crash = sim.crash if isinstance(plan, Run) and plan.crash else None
        chunks = ChunkStream(request, response, sim.faults, crash)
        try:
            async for event in events(plan):
                if chunks.failing:
                    for chunk in writer.failure():
                        await chunks.send(chunk)
                    break
                for chunk in writer.chunks(event):
                    await chunks.send(chunk)
            await chunks.finish()
        except StreamAborted:
            pass
        return response
    finally:
        if isinstance(plan, Run):
            plan.release()
