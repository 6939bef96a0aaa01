"""The fake's deployments and versions, their environment variables, revisions and build logs."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from .fake_common import NOW, FakeBase, Route, error, label_problem

__test__ = False


class DeploymentRoutes(FakeBase):
    """Deployments, versions, version environment variables, revisions, logs."""

    def deployment_routes(self, p: str) -> list[Route]:
        d = p + "/deployments/{deployment}"
        v = d + "/versions/{version}"
        return [
            ("GET", d, self.deployment_get),
            ("POST", p + "/deployments", self.deployment_create),
            ("DELETE", d, self.deployment_delete),
            ("GET", v, self.version_get),
            ("GET", d + "/versions", self.versions_list),
            ("POST", d + "/versions", self.version_create),
            ("PATCH", v, self.version_update),
            ("DELETE", v, self.version_delete),
            ("GET", v + "/environment-variables", self.variables_list),
            ("POST", v + "/environment-variables", self.variable_create),
            ("PATCH", v + "/environment-variables/{id}", self.variable_update),
            ("DELETE", v + "/environment-variables/{id}", self.variable_delete),
            ("POST", v + "/revisions", self.revision_upload),
            ("GET", v + "/revisions/{revision}", self.revision_get),
            ("GET", p + "/logs", self.logs_list),
        ]

    async def deployment_get(self, request: web.Request) -> web.Response:
        dep = self.state.deployments.get(request.match_info["deployment"])
        return web.json_response(dep) if dep else error(404, "Deployment not found.")

    async def deployment_create(self, request: web.Request) -> web.Response:
        data = await request.json()
        name = data.get("name")
        if not name or name in self.state.deployments:
            return error(400, "Invalid or duplicate deployment name.")
        problem = label_problem(data.get("labels"))
        if problem:
            return error(400, problem)
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
            return error(404, "Deployment not found.")
        version = self._version(request)
        return web.json_response(version) if version else error(404, "Version not found.")

    def _check_version_fields(self, deployment: str, data: dict[str, Any]) -> str | None:
        if "instance_type_group_name" in data and (
            data["instance_type_group_name"] not in self.state.instance_types
        ):
            return "Instance type group not found."
        if "environment_name" in data or "environment_tag" in data:
            key = (data.get("environment_name"), data.get("environment_tag"))
            tag = self.state.tags.get(key)  # type: ignore[arg-type]
            if tag is None or not tag["built"]:
                return f"Environment tag {key} does not exist or is not built."
            wanted = self.state.deployments[deployment]["supports_request_format"]
            if tag["supports_request_format"] != wanted:
                return (
                    f"Environment tag {key} has supports_request_format="
                    f"{tag['supports_request_format']}, the deployment {wanted}: they must match."
                )
        problem = label_problem(data.get("labels"))
        if problem:
            return problem
        for port in data.get("ports") or []:
            if set(port) != {"public_port", "deployment_port", "protocol"}:
                return "Invalid port."
        return None

    async def version_create(self, request: web.Request) -> web.Response:
        deployment = request.match_info["deployment"]
        if deployment not in self.state.deployments:
            return error(404, "Deployment not found.")
        data = await request.json()
        name = data.get("version")
        if not name or (deployment, name) in self.state.versions:
            return error(400, "Invalid or duplicate version name.")
        problem = self._check_version_fields(deployment, data)
        if problem:
            return error(400, problem)
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
            return error(404, "Version not found.")
        data = await request.json()
        merged = {
            "environment_name": version["environment_name"],
            "environment_tag": version["environment_tag"],
            **data,
        }
        problem = self._check_version_fields(request.match_info["deployment"], merged)
        if problem:
            return error(400, problem)
        version.update(data)
        return web.json_response(version)

    def _variables(self, request: web.Request) -> list[dict[str, Any]] | None:
        key = (request.match_info["deployment"], request.match_info["version"])
        return self.state.variables.get(key)

    def _shown(self, item: dict[str, Any]) -> dict[str, Any]:
        """As the API shows a variable: a secret's value is never returned."""
        return item | {"value": None} if item["secret"] else item

    async def variables_list(self, request: web.Request) -> web.Response:
        items = self._variables(request)
        if items is None:
            return error(404, "Version not found.")
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
            return error(404, "Version not found.")
        data = await request.json()
        if {"name", "value", "secret"} - set(data):
            return error(400, "name, value and secret are required")
        if any(i["name"] == data["name"] for i in items):
            return error(400, "An environment variable with this name already exists.")
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
            return error(404, "Environment variable not found.")
        data = await request.json()
        item.update({k: data[k] for k in ("name", "value", "secret") if k in data})
        return web.json_response(
            {k: self._shown(item)[k] for k in ("id", "name", "value", "secret")}
        )

    async def variable_delete(self, request: web.Request) -> web.Response:
        items = self._variables(request) or []
        item = next((i for i in items if i["id"] == request.match_info["id"]), None)
        if item is None:
            return error(404, "Environment variable not found.")
        items.remove(item)
        return web.Response(status=204)

    async def revision_upload(self, request: web.Request) -> web.Response:
        version = self._version(request)
        if version is None:
            return error(404, "Version not found.")
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return error(400, "file is required")
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
        return web.json_response(revision) if revision else error(404, "Revision not found.")

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

    async def versions_list(self, request: web.Request) -> web.Response:
        deployment = request.match_info["deployment"]
        if deployment not in self.state.deployments:
            return error(404, "Deployment not found.")
        return web.json_response(
            [v for (d, _), v in self.state.versions.items() if d == deployment]
        )

    async def version_delete(self, request: web.Request) -> web.Response:
        key = (request.match_info["deployment"], request.match_info["version"])
        if self.state.versions.pop(key, None) is None:
            return error(404, "Version not found.")
        self.state.variables.pop(key, None)
        return web.Response(status=204)

    async def deployment_delete(self, request: web.Request) -> web.Response:
        deployment = request.match_info["deployment"]
        if self.state.deployments.pop(deployment, None) is None:
            return error(404, "Deployment not found.")
        for key in [k for k in self.state.versions if k[0] == deployment]:
            del self.state.versions[key]
            self.state.variables.pop(key, None)
        return web.Response(status=204)
