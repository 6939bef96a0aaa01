"""An in-memory fake of the UbiOps REST API (v2, as the ``ubiops`` 4.15 client calls it), only
the endpoints ``proxy.deploy`` and the README's request examples use.

Responses carry the fields of the models of the real ``ubiops`` client (``DeploymentVersionDetail``,
``EnvironmentTagList``, ``InheritedEnvironmentVariableList``, …), with every field the client marks
required, so the real client deserialises them as it would the real API's. Builds finish at once
(or fail, when told to), so the client's waiters never sleep. The fake is stricter than UbiOps
documents where the issue is open: labels follow :data:`~.fake_common.LABEL_PART`, a version's
environment tag must match its deployment's ``supports_request_format``, and a built tag's flag
cannot change. Requests are answered by an emulated instance (:mod:`.fake_requests`). Every
request is recorded in :attr:`FakeUbiOps.calls`.

The server runs on its own event loop in a thread because the ``ubiops`` client is synchronous.
The route groups live in ``fake_environments``, ``fake_deployments``, ``fake_services`` and
``fake_requests``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from .fake_common import DEDICATED, NOW, Call, Handler, State, error
from .fake_deployments import DeploymentRoutes
from .fake_environments import EnvironmentRoutes
from .fake_requests import RequestRoutes
from .fake_services import ServiceRoutes

__all__ = ["API_PREFIX", "DEDICATED", "Call", "FakeUbiOps", "State", "serve"]
__test__ = False

API_PREFIX = "/v2"
"""The path the API is served under: the pinned client's default host ends in ``/v2``."""


class FakeUbiOps(EnvironmentRoutes, DeploymentRoutes, ServiceRoutes, RequestRoutes):
    """The fake API server; use :func:`serve` to run it."""

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record, self._auth])
        p = API_PREFIX + "/projects/{project}"
        routes = [
            ("GET", p, self.project_get),
            ("GET", p + "/instance-type-groups", self.instance_type_groups),
            *self.environment_routes(p),
            *self.deployment_routes(p),
            *self.service_routes(p),
            *self.request_routes(p),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = None
        if request.content_type == "application/json" and request.can_read_body:
            body = await request.json()
        self.calls.append(Call(request.method, request.path, dict(request.query), body))
        response: web.StreamResponse = await handler(request)
        return response

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        if (
            not header.startswith("Token ")
            or header.removeprefix("Token ") not in self.state.tokens
        ):
            return error(401, "Invalid token.")
        if request.match_info.get("project") != self.state.project:
            return error(404, "Project not found.")
        response: web.StreamResponse = await handler(request)
        return response

    # -- project and instance types ------------------------------------------------------------

    async def project_get(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "id": self._id(),
                "name": self.state.project,
                "creation_date": NOW,
                "advanced_permissions": False,
                "credits": None,
                "organization_name": "org",
                "labels": {},
                "suspended": False,
                "suspended_reason": None,
                "cors_origins": [],
            }
        )

    async def instance_type_groups(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "50"))
        start = int(request.query.get("cursor", "0"))
        names = self.state.instance_types
        page = names[start : start + limit]
        nxt = start + limit
        return web.json_response(
            {
                "next": f"{self.url}/projects/x/instance-type-groups?cursor={nxt}&limit={limit}"
                if nxt < len(names)
                else None,
                "previous": None,
                "results": [
                    {
                        "id": f"group-{start + i}",
                        "name": name,
                        "time_created": NOW,
                        "time_updated": NOW,
                        "instance_types": [{"id": f"type-{start + i}", "name": name}],
                    }
                    for i, name in enumerate(page)
                ],
            }
        )


@contextmanager
def serve() -> Iterator[FakeUbiOps]:
    """Run a :class:`FakeUbiOps` on a free 127.0.0.1 port for the duration of the block."""
    fake = FakeUbiOps()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(fake.app())
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        host, port = runner.addresses[0][:2]
        fake.url = f"http://{host}:{port}{API_PREFIX}"
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="fake-ubiops", daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the fake UbiOps API did not start")
    try:
        yield fake
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
