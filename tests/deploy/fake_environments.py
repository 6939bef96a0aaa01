"""The fake's environments and their image tags (bring-your-own images, built at once)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .fake_common import NOW, FakeBase, Route, error, label_problem

__test__ = False


class EnvironmentRoutes(FakeBase):
    """Environments, their tags, a tag's build and usage."""

    def environment_routes(self, p: str) -> list[Route]:
        e = p + "/environments/{environment}"
        return [
            ("GET", e, self.environment_get),
            ("POST", p + "/environments", self.environment_create),
            ("DELETE", e, self.environment_delete),
            ("GET", e + "/tags", self.tags_list),
            ("POST", e + "/tags", self.tag_create),
            ("GET", e + "/tags/{tag}", self.tag_get),
            ("PATCH", e + "/tags/{tag}", self.tag_update),
            ("POST", e + "/tags/{tag}/build", self.tag_build),
            ("GET", e + "/tags/{tag}/usage", self.tag_usage),
        ]

    async def environment_get(self, request: web.Request) -> web.Response:
        env = self.state.environments.get(request.match_info["environment"])
        return web.json_response(env) if env else error(404, "Environment not found.")

    async def environment_create(self, request: web.Request) -> web.Response:
        data = await request.json()
        name = data.get("name")
        if not name:
            return error(400, "name is required")
        if name in self.state.environments:
            return error(400, "An environment with this name already exists.")
        problem = label_problem(data.get("labels"))
        if problem:
            return error(400, problem)
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
            return error(404, "Environment not found.")
        return web.json_response([t for (e, _), t in self.state.tags.items() if e == env])

    async def tag_get(self, request: web.Request) -> web.Response:
        tag = self._tag(request)
        return web.json_response(tag) if tag else error(404, "Tag not found.")

    async def tag_create(self, request: web.Request) -> web.Response:
        env = request.match_info["environment"]
        if env not in self.state.environments:
            return error(404, "Environment not found.")
        data = await request.json()
        name = data.get("name")
        if not name or (env, name) in self.state.tags:
            return error(400, "Invalid or duplicate tag name.")
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
            return error(404, "Tag not found.")
        data = await request.json()
        flag = data.get("supports_request_format")
        if tag["built"] and flag is not None and flag != tag["supports_request_format"]:
            return error(
                400,
                "supports_request_format cannot be changed on a built tag: the request agent "
                "is part of the image.",
            )
        tag.update(data)
        return web.json_response(tag)

    async def tag_usage(self, request: web.Request) -> web.Response:
        tag = self._tag(request)
        if tag is None:
            return error(404, "Tag not found.")
        env, name = tag["environment"], tag["name"]
        return web.json_response(
            [
                {
                    "id": version["id"],
                    "deployment": deployment,
                    "version": version["version"],
                    "environment_name": env,
                    "environment_tag": name,
                    "status": version["status"],
                }
                for (deployment, _), version in self.state.versions.items()
                if (version["environment_name"], version["environment_tag"]) == (env, name)
            ]
        )

    async def environment_delete(self, request: web.Request) -> web.Response:
        name = request.match_info["environment"]
        if name not in self.state.environments:
            return error(404, "Environment not found.")
        if any(v["environment_name"] == name for v in self.state.versions.values()):
            return error(400, "The environment is in use by a deployment version.")
        del self.state.environments[name]
        for key in [k for k in self.state.tags if k[0] == name]:
            del self.state.tags[key]
        return web.Response(status=204)

    async def tag_build(self, request: web.Request) -> web.Response:
        tag = self._tag(request)
        if tag is None:
            return error(404, "Tag not found.")
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return error(400, "file is required")
        self.state.uploads.append(("environment", tag["name"], upload.file.read()))
        failure = self.state.fail_environment_build
        tag.update(
            status="failed" if failure else "success",
            error_message=failure,
            built=not failure,
            size=1,
        )
        return web.json_response({"success": True})
