"""An in-memory fake of the UbiOps REST API (v2.1), only the endpoints ``proxy.deploy`` uses.

Responses carry the fields of the models of the real ``ubiops`` client (4.15:
``DeploymentVersionDetail``, ``EnvironmentTagList``, ``InheritedEnvironmentVariableList``, …), with
every field the client marks required, so the real client deserialises them as it would the
real API's. Builds finish at once (or fail, when told to), so the client's waiters never sleep.
Every request is recorded in :attr:`FakeUbiOps.calls`.

The server runs on its own event loop in a thread because the ``ubiops`` client is synchronous.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__test__ = False

DEDICATED = "16384 MB + 4 vCPU (Dedicated)"
NOW = "2026-11-25T06:00:00.000000Z"
Handler = Callable[[web.Request], Any]


@dataclass(frozen=True)
class Call:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    body: Any

    @property
    def mutating(self) -> bool:
        return self.method in {"POST", "PATCH", "PUT", "DELETE"}


@dataclass
class State:
    """What the fake project holds; tests may edit it between runs."""

    project: str = "demo"
    tokens: set[str] = field(default_factory=lambda: {"good-token"})
    instance_types: list[str] = field(default_factory=lambda: [DEDICATED, "2048 MB + 0.5 vCPU"])
    environments: dict[str, dict[str, Any]] = field(default_factory=dict)
    tags: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    variables: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    secret_values: dict[str, str] = field(default_factory=dict)
    revisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    uploads: list[tuple[str, str, bytes]] = field(default_factory=list)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail_revision_build: str | None = None
    fail_environment_build: str | None = None
    build_logs: list[str] = field(default_factory=list)
    log_queries: list[str] = field(default_factory=list)


class FakeUbiOps:
    """The fake API server; use :func:`serve` to run it."""

    def __init__(self) -> None:
        self.state = State()
        self.calls: list[Call] = []
        self.url = ""
        self._ids = itertools.count(1)

    # -- introspection helpers for tests -------------------------------------------------------

    def mutations(self) -> list[tuple[str, str]]:
        return [(c.method, c.path) for c in self.calls if c.mutating]

    def variable(self, deployment: str, version: str, name: str) -> dict[str, Any] | None:
        for item in self.state.variables.get((deployment, version), []):
            if item["name"] == name:
                return item
        return None

    # -- the application -----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record, self._auth])
        p = "/v2.1/projects/{project}"
        d = p + "/deployments/{deployment}"
        v = d + "/versions/{version}"
        e = p + "/environments/{environment}"
        routes = [
            ("GET", p, self.project_get),
            ("GET", p + "/instance-type-groups", self.instance_type_groups),
            ("GET", p + "/environments/{environment}", self.environment_get),
            ("POST", p + "/environments", self.environment_create),
            ("GET", e + "/tags", self.tags_list),
            ("POST", e + "/tags", self.tag_create),
            ("GET", e + "/tags/{tag}", self.tag_get),
            ("PATCH", e + "/tags/{tag}", self.tag_update),
            ("POST", e + "/tags/{tag}/build", self.tag_build),
            ("GET", d, self.deployment_get),
            ("POST", p + "/deployments", self.deployment_create),
            ("GET", v, self.version_get),
            ("POST", d + "/versions", self.version_create),
            ("PATCH", v, self.version_update),
            ("GET", v + "/environment-variables", self.variables_list),
            ("POST", v + "/environment-variables", self.variable_create),
            ("PATCH", v + "/environment-variables/{id}", self.variable_update),
            ("DELETE", v + "/environment-variables/{id}", self.variable_delete),
            ("POST", v + "/revisions", self.revision_upload),
            ("GET", v + "/revisions/{revision}", self.revision_get),
            ("GET", p + "/logs", self.logs_list),
            ("GET", p + "/services/{service}", self.service_get),
            ("POST", p + "/services", self.service_create),
            ("PATCH", p + "/services/{service}", self.service_update),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body: Any = None
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
            return _error(401, "Invalid token.")
        if request.match_info.get("project") != self.state.project:
            return _error(404, "Project not found.")
        response: web.StreamResponse = await handler(request)
        return response

    def _id(self) -> str:
        return str(uuid.UUID(int=next(self._ids)))

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

    # -- environments --------------------------------------------------------------------------

    async def environment_get(self, request: web.Request) -> web.Response:
        env = self.state.environments.get(request.match_info["environment"])
        return web.json_response(env) if env else _error(404, "Environment not found.")

    async def environment_create(self, request: web.Request) -> web.Response:
        data = await request.json()
        name = data.get("name")
        if not name:
            return _error(400, "name is required")
        if name in self.state.environments:
            return _error(400, "An environment with this name already exists.")
        env = {
            "id": self._id(),
            "name": name,
            "project": self.state.project,
            "creation_date": NOW,
            "last_updated": NOW,
            "description": data.get("description"),
            "labels": data.get("labels") or {},
            "system": False,
        }
        self.state.environments[name] = env
        return web.json_response(env, status=201)

    def _tag(self, request: web.Request) -> dict[str, Any] | None:
        key = (request.match_info["environment"], request.match_info["tag"])
        return self.state.tags.get(key)

    async def tags_list(self, request: web.Request) -> web.Response:
        env = request.match_info["environment"]
        if env not in self.state.environments:
            return _error(404, "Environment not found.")
        return web.json_response([t for (e, _), t in self.state.tags.items() if e == env])

    async def tag_get(self, request: web.Request) -> web.Response:
        tag = self._tag(request)
        return web.json_response(tag) if tag else _error(404, "Tag not found.")

    async def tag_create(self, request: web.Request) -> web.Response:
        env = request.match_info["environment"]
        if env not in self.state.environments:
            return _error(404, "Environment not found.")
        data = await request.json()
        name = data.get("name")
        if not name or (env, name) in self.state.tags:
            return _error(400, "Invalid or duplicate tag name.")
        tag = {
            "id": self._id(),
            "name": name,
            "environment": env,
            "creation_date": NOW,
            "status": "draft",
            "supports_request_format": bool(data.get("supports_request_format", False)),
            "implicit": False,
            "deprecated": False,
            "size": None,
            "error_message": None,
            "base_environment_name": None,
            "base_environment_tag": None,
            "built": False,
        }
        self.state.tags[(env, name)] = tag
        return web.json_response(tag, status=201)

    async def tag_update(self, request: web.Request) -> web.Response:
        tag = self._tag(request)
        if tag is None:
            return _error(404, "Tag not found.")
        tag.update(await request.json())
        return web.json_response(tag)

    async def tag_build(self, request: web.Request) -> web.Response:
        tag = self._tag(request)
        if tag is None:
            return _error(404, "Tag not found.")
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return _error(400, "file is required")
        self.state.uploads.append(("environment", tag["name"], upload.file.read()))
        failure = self.state.fail_environment_build
        tag.update(
            status="failed" if failure else "success",
            error_message=failure,
            built=not failure,
            size=1,
        )
        return web.json_response({"success": True})

    # -- deployments and versions --------------------------------------------------------------

    async def deployment_get(self, request: web.Request) -> web.Response:
        dep = self.state.deployments.get(request.match_info["deployment"])
        return web.json_response(dep) if dep else _error(404, "Deployment not found.")

    async def deployment_create(self, request: web.Request) -> web.Response:
        data = await request.json()
        name = data.get("name")
        if not name or name in self.state.deployments:
            return _error(400, "Invalid or duplicate deployment name.")
        dep = {
            "id": self._id(),
            "name": name,
            "project": self.state.project,
            "supports_request_format": data.get("supports_request_format", True),
            "description": data.get("description"),
            "input_type": data.get("input_type", "structured"),
            "output_type": data.get("output_type", "structured"),
            "input_fields": [],
            "output_fields": [],
            "labels": data.get("labels") or {},
            "creation_date": NOW,
            "last_updated": NOW,
            "default_version": None,
        }
        self.state.deployments[name] = dep
        return web.json_response(dep, status=201)

    def _version(self, request: web.Request) -> dict[str, Any] | None:
        key = (request.match_info["deployment"], request.match_info["version"])
        return self.state.versions.get(key)

    async def version_get(self, request: web.Request) -> web.Response:
        if request.match_info["deployment"] not in self.state.deployments:
            return _error(404, "Deployment not found.")
        version = self._version(request)
        return web.json_response(version) if version else _error(404, "Version not found.")

    def _check_version_fields(self, data: dict[str, Any]) -> str | None:
        if "instance_type_group_name" in data and (
            data["instance_type_group_name"] not in self.state.instance_types
        ):
            return "Instance type group not found."
        if "environment_name" in data or "environment_tag" in data:
            key = (data.get("environment_name"), data.get("environment_tag"))
            tag = self.state.tags.get(key)  # type: ignore[arg-type]
            if tag is None or not tag["built"]:
                return f"Environment tag {key} does not exist or is not built."
        for port in data.get("ports") or []:
            if set(port) != {"public_port", "deployment_port", "protocol"}:
                return "Invalid port."
        return None

    async def version_create(self, request: web.Request) -> web.Response:
        deployment = request.match_info["deployment"]
        if deployment not in self.state.deployments:
            return _error(404, "Deployment not found.")
        data = await request.json()
        name = data.get("version")
        if not name or (deployment, name) in self.state.versions:
            return _error(400, "Invalid or duplicate version name.")
        problem = self._check_version_fields(data)
        if problem:
            return _error(400, problem)
        version = {
            "id": self._id(),
            "deployment": deployment,
            "version": name,
            "default": not any(d == deployment for d, _ in self.state.versions),
            "description": data.get("description"),
            "environment_name": data.get("environment_name"),
            "environment_tag": data.get("environment_tag"),
            "status": "unavailable",
            "active_revision": None,
            "latest_revision": None,
            "maximum_instances": data.get("maximum_instances", 5),
            "minimum_instances": data.get("minimum_instances", 0),
            "maximum_idle_time": data.get("maximum_idle_time", 300),
            "labels": data.get("labels") or {},
            "creation_date": NOW,
            "last_updated": NOW,
            "request_retention_time": 604800,
            "request_retention_mode": "full",
            "maximum_queue_size": None,
            "restart_request_interruption": False,
            "ports": data.get("ports") or [],
            "instance_type": None,
            "scaling_strategy": "default",
            "instance_processes": data.get("instance_processes", 1),
            "instance_type_group_id": "group-0",
            "instance_type_group_name": data.get("instance_type_group_name"),
            "last_file_upload": None,
            "has_request_method": None,
            "has_requests_method": None,
            "health_check": data.get("health_check"),
            "command": None,
            "args": None,
        }
        self.state.versions[(deployment, name)] = version
        self.state.variables[(deployment, name)] = []
        return web.json_response(version, status=201)

    async def version_update(self, request: web.Request) -> web.Response:
        version = self._version(request)
        if version is None:
            return _error(404, "Version not found.")
        data = await request.json()
        merged = {
            "environment_name": version["environment_name"],
            "environment_tag": version["environment_tag"],
            **data,
        }
        problem = self._check_version_fields(merged)
        if problem:
            return _error(400, problem)
        version.update(data)
        return web.json_response(version)

    # -- environment variables -----------------------------------------------------------------

    def _variables(self, request: web.Request) -> list[dict[str, Any]] | None:
        key = (request.match_info["deployment"], request.match_info["version"])
        return self.state.variables.get(key)

    def _shown(self, item: dict[str, Any]) -> dict[str, Any]:
        """As the API shows a variable: a secret's value is never returned."""
        return item | {"value": None} if item["secret"] else item

    async def variables_list(self, request: web.Request) -> web.Response:
        items = self._variables(request)
        if items is None:
            return _error(404, "Version not found.")
        inherited = [
            {
                "id": "inherited-1",
                "name": "PROJECT_WIDE",
                "value": "x",
                "secret": False,
                "inheritance_type": "project",
                "inheritance_name": self.state.project,
            }
        ]
        return web.json_response([self._shown(i) for i in items] + inherited)

    async def variable_create(self, request: web.Request) -> web.Response:
        items = self._variables(request)
        if items is None:
            return _error(404, "Version not found.")
        data = await request.json()
        if {"name", "value", "secret"} - set(data):
            return _error(400, "name, value and secret are required")
        if any(i["name"] == data["name"] for i in items):
            return _error(400, "An environment variable with this name already exists.")
        item = {
            "id": self._id(),
            "name": data["name"],
            "value": data["value"],
            "secret": bool(data["secret"]),
            "inheritance_type": None,
            "inheritance_name": None,
        }
        items.append(item)
        return web.json_response(
            {k: self._shown(item)[k] for k in ("id", "name", "value", "secret")}, status=201
        )

    async def variable_update(self, request: web.Request) -> web.Response:
        items = self._variables(request) or []
        item = next((i for i in items if i["id"] == request.match_info["id"]), None)
        if item is None:
            return _error(404, "Environment variable not found.")
        data = await request.json()
        item.update({k: data[k] for k in ("name", "value", "secret") if k in data})
        return web.json_response(
            {k: self._shown(item)[k] for k in ("id", "name", "value", "secret")}
        )

    async def variable_delete(self, request: web.Request) -> web.Response:
        items = self._variables(request) or []
        item = next((i for i in items if i["id"] == request.match_info["id"]), None)
        if item is None:
            return _error(404, "Environment variable not found.")
        items.remove(item)
        return web.Response(status=204)

    # -- revisions and logs --------------------------------------------------------------------

    async def revision_upload(self, request: web.Request) -> web.Response:
        version = self._version(request)
        if version is None:
            return _error(404, "Version not found.")
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return _error(400, "file is required")
        revision_id = self._id()
        self.state.uploads.append(("revision", revision_id, upload.file.read()))
        failure = self.state.fail_revision_build
        self.state.revisions[revision_id] = {
            "id": revision_id,
            "version": version["version"],
            "creation_date": NOW,
            "created_by": "deployer",
            "status": "failed" if failure else "success",
            "error_message": failure,
            "has_request_method": True,
            "has_requests_method": False,
            "empty": False,
        }
        version["latest_revision"] = revision_id
        if not failure:
            version["active_revision"] = revision_id
        version["status"] = "unavailable" if failure else "available"
        return web.json_response({"success": True, "revision": revision_id}, status=201)

    async def revision_get(self, request: web.Request) -> web.Response:
        revision = self.state.revisions.get(request.match_info["revision"])
        return web.json_response(revision) if revision else _error(404, "Revision not found.")

    async def logs_list(self, request: web.Request) -> web.Response:
        query = request.query.get("query", "")
        self.state.log_queries.append(query)
        matched = re.search(r"(deployment_version_revision_id|environment_tag)=`", query)
        lines = self.state.build_logs if matched else []
        return web.json_response(
            [
                {"timestamp": 1_700_000_000_000_000_000 + i, "log": line, "metadata": {}}
                for i, line in enumerate(lines)
            ]
        )

    # -- services ------------------------------------------------------------------------------

    async def service_get(self, request: web.Request) -> web.Response:
        service = self.state.services.get(request.match_info["service"])
        return web.json_response(service) if service else _error(404, "Service not found.")

    async def service_create(self, request: web.Request) -> web.Response:
        data = await request.json()
        if not data.get("name") or "port" not in data:
            return _error(400, "name and port are required")
        if (data.get("deployment"), data.get("version")) not in self.state.versions:
            return _error(400, "Deployment version not found.")
        service_id = self._id()
        service = {
            "id": service_id,
            "name": data["name"],
            "deployment": data.get("deployment"),
            "version": data.get("version"),
            "port": data["port"],
            "time_created": NOW,
            "time_updated": NOW,
            "labels": data.get("labels") or {},
            "authentication_required": data.get("authentication_required", True),
            "authentication_header_pass_through": data.get(
                "authentication_header_pass_through", False
            ),
            "type": "deployment",
            "description": data.get("description"),
            "endpoint": f"https://{service_id}.services.ubiops.com",
        }
        self.state.services[data["name"]] = service
        return web.json_response(service, status=201)

    async def service_update(self, request: web.Request) -> web.Response:
        service = self.state.services.get(request.match_info["service"])
        if service is None:
            return _error(404, "Service not found.")
        service.update(await request.json())
        return web.json_response(service)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


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
        fake.url = f"http://{host}:{port}/v2.1"
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
