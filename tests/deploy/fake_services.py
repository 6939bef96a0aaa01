"""The fake's Services: a deployment version's port behind managed HTTPS."""

from __future__ import annotations

from aiohttp import web

from .fake_common import NOW, FakeBase, Route, error, label_problem

__test__ = False


class ServiceRoutes(FakeBase):
    """Services: get, list, create, update, delete."""

    def service_routes(self, p: str) -> list[Route]:
        s = p + "/services/{service}"
        return [
            ("GET", s, self.service_get),
            ("GET", p + "/services", self.services_list),
            ("POST", p + "/services", self.service_create),
            ("PATCH", s, self.service_update),
            ("DELETE", s, self.service_delete),
        ]

    async def service_get(self, request: web.Request) -> web.Response:
        service = self.state.services.get(request.match_info["service"])
        return web.json_response(service) if service else error(404, "Service not found.")

    async def service_create(self, request: web.Request) -> web.Response:
        data = await request.json()
        if not data.get("name") or "port" not in data:
            return error(400, "name and port are required")
        if (data.get("deployment"), data.get("version")) not in self.state.versions:
            return error(400, "Deployment version not found.")
        problem = label_problem(data.get("labels"))
        if problem:
            return error(400, problem)
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
            return error(404, "Service not found.")
        service.update(await request.json())
        return web.json_response(service)

    async def services_list(self, request: web.Request) -> web.Response:
        fields = ("id", "name", "deployment", "version", "port", "time_created", "time_updated")
        return web.json_response(
            [
                {
                    **{k: s[k] for k in fields},
                    "labels": s["labels"],
                    "authentication_required": s["authentication_required"],
                    "type": s["type"],
                }
                for s in self.state.services.values()
            ]
        )

    async def service_delete(self, request: web.Request) -> web.Response:
        if self.state.services.pop(request.match_info["service"], None) is None:
            return error(404, "Service not found.")
        return web.Response(status=204)
