"""``POST /api/pull``: Ollama's progress stream, in-band errors and the injected pull failures.

Progress order (Ollama's ``PullModel``): ``pulling manifest``; per layer ``pulling <12 hex>``
lines with ``digest``, ``total`` and a growing ``completed`` (absent while zero, as Go omits it);
``verifying sha256 digest``; ``writing manifest``; ``removing any unused layers`` (the documented
line); ``success``. Errors after the first line arrive in-band under HTTP 200, so an unknown model
gives ``pulling manifest`` then ``{"error":"pull model manifest: file does not exist"}``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from .faults import PullFailureMode
from .logs import log
from .names import ModelName
from .registry import Layer
from .runtime import SIMULATOR, Simulator
from .streaming import drop_connection, open_stream
from .wire import ApiError, dumps, error_response, get_field, json_response, read_body

__all__ = ["pull"]

_NOT_FOUND = "pull model manifest: file does not exist"
_RETRIES = "max retries exceeded: simulated download failure (SIM_PULL_FAILURE_MODE=inband)"
_HTTP500 = "pull model manifest: simulated registry failure (SIM_PULL_FAILURE_MODE=http500)"


class _PullFailed(Exception):
    """The pull fails; ``reason`` goes to ``pulls.log``, ``message`` to the client (if any)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _layer_line(layer: Layer, completed: int) -> dict[str, Any]:
    line: dict[str, Any] = {
        "status": f"pulling {layer.digest[7:19]}",
        "digest": layer.digest,
        "total": layer.size,
    }
    if completed:
        line["completed"] = completed
    return line


class _Pull:
    """One pull request's progress, as an async iterator of NDJSON objects."""

    def __init__(self, sim: Simulator, name: ModelName, failure: PullFailureMode | None) -> None:
        self.sim = sim
        self.name = name
        self.failure = failure
        self.downloaded = False
        self._first = True

    async def _paced(self, line: dict[str, Any]) -> dict[str, Any]:
        if not self._first and self.sim.faults.pull_delay > 0:
            await asyncio.sleep(self.sim.faults.pull_delay)
        self._first = False
        return line

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        """Yield progress lines; raises :class:`_PullFailed` where the pull breaks off."""
        sim = self.sim
        yield await self._paced({"status": "pulling manifest"})
        spec = sim.registry.lookup(self.name)
        if self.failure is not None:
            layer = spec.layers()[0] if spec else _fake_layer(self.name)
            yield await self._paced(_layer_line(layer, 0))
            yield await self._paced(_layer_line(layer, layer.size // 3))
            raise _PullFailed(self.failure.value, _RETRIES)
        if spec is None:
            raise _PullFailed("not_found", _NOT_FOUND)
        existing = sim.store.get(self.name)
        present = set(existing.layers) if existing else set()
        steps = sim.faults.pull_steps
        for layer in spec.layers():
            if layer.digest in present:
                yield await self._paced(_layer_line(layer, layer.size))
                continue
            log(
                "INFO",
                "download.go:177",
                f"downloading {layer.digest[7:19]} in 16 {layer.size} B part(s)",
            )
            for step in range(steps):
                done = layer.size if steps == 1 else layer.size * step // (steps - 1)
                yield await self._paced(_layer_line(layer, done))
        yield await self._paced({"status": "verifying sha256 digest"})
        yield await self._paced({"status": "writing manifest"})
        installed = sim.store.install(self.name, spec)
        self.downloaded = existing is None or existing.digest != installed.digest
        yield await self._paced({"status": "removing any unused layers"})
        yield await self._paced({"status": "success"})

    def record(self, reason: str | None) -> None:
        """Append the outcome to ``pulls.log``."""
        outcome = "success" if reason is None else "failed"
        self.sim.counters.record_pull(self.name.display, outcome, reason, self.downloaded)


def _fake_layer(name: ModelName) -> Layer:
    digest = hashlib.sha256(f"ollama-sim missing {name.key}".encode()).hexdigest()
    return Layer("application/vnd.ollama.image.model", f"sha256:{digest}", 100_000_000, None)


async def pull(request: web.Request) -> web.StreamResponse:
    """Handle ``POST /api/pull`` (``model`` or legacy ``name``; ``stream`` defaults to true)."""
    sim = request.app[SIMULATOR]
    try:
        body = await read_body(request, "api.PullRequest")
        raw = get_field(body, "model", str, "", "PullRequest") or get_field(
            body, "name", str, "", "PullRequest"
        )
        stream = get_field(body, "stream", bool, True, "PullRequest")
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    name = ModelName.parse(raw)
    if name is None:
        return error_response(400, "invalid model name")
    job = _Pull(sim, name, sim.counters.take_pull_failure())
    if job.failure is PullFailureMode.HTTP500:
        job.record(job.failure.value)
        return error_response(500, _HTTP500)
    if not stream:
        return await _wait(request, job)
    response = await open_stream(request, "application/x-ndjson")
    try:
        async for line in job.progress():
            await response.write(dumps(line).encode() + b"\n")
    except _PullFailed as exc:
        job.record(exc.reason)
        if exc.reason == PullFailureMode.CUT:
            drop_connection(request)
            return response
        await response.write(dumps({"error": exc.message}).encode() + b"\n")
    else:
        job.record(None)
    await response.write_eof()
    return response


async def _wait(request: web.Request, job: _Pull) -> web.StreamResponse:
    """``stream: false``: the last progress line, or HTTP 500 with the error (``waitForStream``)."""
    last: dict[str, Any] = {}
    try:
        async for line in job.progress():
            last = line
    except _PullFailed as exc:
        job.record(exc.reason)
        if exc.reason == PullFailureMode.CUT:
            drop_connection(request)
        return error_response(500, exc.message)
    job.record(None)
    return json_response(last)
