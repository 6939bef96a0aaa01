"""The fake's deployment requests, direct and streamed, answered by an emulated instance.

A test puts what serves a version in :attr:`RequestRoutes.instances` (a
:class:`~proxy.testing.ubiops_instance.UbiOpsInstance`, or anything with its ``request``). The
platform's rules are enforced before it is asked: the version exists and has built, the
deployment and its environment tag support the request format, plain input arrives as text
(``text/plain``: the ``ubiops`` client sends a ``str`` so, and a dict as JSON), and the timeout is
within the direct-request range.

The stream (``…/requests/stream``) is what ``ubiops.utils.stream_deployment_request`` reads: every
``streaming_update`` text as an SSE event (``event: update``, one ``data:`` line per line of the
text, the client yields what follows ``data:`` as is), then one bare line with the request's
JSON (``DeploymentRequestCreateResponse``), whose ``error_message`` makes the client raise.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

from aiohttp import web

from .fake_common import FakeBase, Route, error

__test__ = False

TIMEOUT_RANGE = (10, 3600)
DIRECT_TIMEOUT = 300
"""The direct request's default timeout (seconds), cold start included."""
_DONE = object()


class Serving(Protocol):
    """What answers a version's requests (an emulated instance)."""

    def request(self, data: Any, *, timeout: float | None = ..., on_update: Any = ...) -> Any: ...


class RequestRoutes(FakeBase):
    """Direct and streamed deployment requests, to a version or the default version."""

    def __init__(self) -> None:
        super().__init__()
        self.instances: dict[tuple[str, str], Serving] = {}

    def request_routes(self, p: str) -> list[Route]:
        d = p + "/deployments/{deployment}"
        v = d + "/versions/{version}"
        return [
            ("POST", d + "/requests", self.request_direct),
            ("POST", v + "/requests", self.request_direct),
            ("POST", d + "/requests/stream", self.request_stream),
            ("POST", v + "/requests/stream", self.request_stream),
        ]

    async def request_direct(self, request: web.Request) -> web.Response:
        checked = await self._check(request, DIRECT_TIMEOUT)
        if isinstance(checked, web.Response):
            return checked
        (deployment, version), text, timeout = checked
        result = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.instances[deployment, version].request(text, timeout=timeout)
        )
        return web.json_response(_response(deployment, version, timeout, result))

    async def request_stream(self, request: web.Request) -> web.StreamResponse:
        checked = await self._check(request, TIMEOUT_RANGE[1])
        if isinstance(checked, web.Response):
            return checked
        (deployment, version), text, timeout = checked
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue[object] = asyncio.Queue()

        def serve() -> Any:
            try:
                return self.instances[deployment, version].request(
                    text,
                    timeout=timeout,
                    on_update=lambda _t, update: loop.call_soon_threadsafe(
                        updates.put_nowait, update
                    ),
                )
            finally:
                loop.call_soon_threadsafe(updates.put_nowait, _DONE)

        served = loop.run_in_executor(None, serve)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        while (update := await updates.get()) is not _DONE:
            lines = "".join(f"data:{line}\n" for line in str(update).split("\n"))
            await response.write(f"event: update\n{lines}\n".encode())
        final = _response(deployment, version, timeout, await served)
        await response.write(json.dumps(final).encode() + b"\n")
        await response.write_eof()
        return response

    async def _check(
        self, request: web.Request, default_timeout: int
    ) -> web.Response | tuple[tuple[str, str], str, int]:
        """The version, the input text and the timeout; or the platform's refusal."""
        deployment = self.state.deployments.get(request.match_info["deployment"])
        if deployment is None:
            return error(404, "Deployment not found.")
        name = request.match_info.get("version")
        versions = [
            v
            for (d, _), v in self.state.versions.items()
            if d == deployment["name"] and (v["version"] == name or (name is None and v["default"]))
        ]
        if not versions:
            return error(404, "Version not found.")
        version = versions[0]
        if version["status"] != "available":
            return error(400, "The deployment version is not available: it has not built.")
        tag = self.state.tags.get((version["environment_name"], version["environment_tag"]))
        if not deployment["supports_request_format"] or not (
            tag and tag["supports_request_format"]
        ):
            return error(400, "This deployment does not support requests (request format).")
        try:
            timeout = int(request.query.get("timeout", default_timeout))
        except ValueError:
            return error(400, "timeout must be an integer")
        low, high = TIMEOUT_RANGE
        if not low <= timeout <= high:
            return error(400, f"timeout must be between {low} and {high} seconds")
        if deployment["input_type"] == "plain" and request.content_type != "text/plain":
            return error(
                400,
                "This deployment has plain input: send the data as a string, e.g. "
                f"json.dumps(...), not as {request.content_type}.",
            )
        key = (deployment["name"], str(version["version"]))
        if key not in self.instances:
            return error(503, "No instance serves this version in the fake.")
        return key, await request.text(), timeout


def _response(deployment: str, version: str, timeout: int, result: Any) -> dict[str, Any]:
    """A ``DeploymentRequestCreateResponse`` of a finished request."""
    return {
        "id": "00000000-0000-0000-0000-00000000feed",
        "deployment": deployment,
        "version": version,
        "status": "completed" if result.ok else "failed",
        "success": result.ok,
        "result": result.output if result.ok else None,
        "error_message": result.error,
        "timeout": timeout,
    }
