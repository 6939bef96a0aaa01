"""Create what is missing and update what differs, against the UbiOps API (idempotent).

:class:`Deployer` walks the plan in dependency order — project and instance type checks,
environment and its image tag, deployment, version, environment variables, deployment package,
build wait, service — and prints one line per object: ``created:``, ``updated:`` (with the
fields that changed), ``uploaded:`` or ``up to date:``. Every API failure becomes a
:class:`DeployError` with a one-line message; a failed build adds the tail of its log.

How a second run knows nothing changed:

* the environment image is uploaded to a tag named after the image ID (``img-<16 hex>``), so an
  image that is already built is found by name and not uploaded again;
* the deployment package zip is reproducible and its sha256 is stored in the version label
  ``deployment-package-sha256`` once it built successfully, so an unchanged package is skipped;
* every other object is compared field by field with the desired state.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from proxy.deploy.builds import Build, wait_for_build
from proxy.deploy.environment import ensure_image
from proxy.deploy.errors import DeployError
from proxy.deploy.package import write_package_zip
from proxy.deploy.plan import (
    DEPLOYMENT_DESCRIPTION,
    LABEL_MANAGED_BY,
    LABEL_PACKAGE_HASH,
    MANAGED_BY,
    PACKAGE_HASH_CHARS,
)
from proxy.deploy.service import ensure_service
from proxy.deploy.session import Outcome, Session, connect, cursor_of
from proxy.deploy.variables import ensure_variables

__all__ = ["Deployer", "Outcome", "connect"]


class Deployer(Session):
    """Brings one project to the state of a :class:`Plan`; see the module docstring.

    Nothing printed or raised contains the UbiOps token or the proxy API key, except the key
    that :attr:`Outcome.api_key` returns to the caller.
    """

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> Outcome:
        """Apply the plan.

        Raises:
            DeployError: an API call failed, an option does not fit the project, or a build
                failed.
        """
        plan = self.plan
        self._check_project()
        self._check_instance_type()
        version_before = self.get(
            "get version",
            self.api.deployment_versions_get,
            plan.project,
            plan.deployment,
            plan.version,
        )
        tag = ensure_image(self, version_before)
        self._ensure_deployment()
        version, version_changed = self._ensure_version(version_before, tag)
        variables_changed = ensure_variables(self)
        self._ensure_package(version, wait=version_changed or variables_changed)
        if plan.service is not None:
            ensure_service(self)
        return self.outcome

    # -- checks --------------------------------------------------------------------------------

    def _check_project(self) -> None:
        if self.get("get project", self.api.projects_get, self.plan.project) is None:
            raise DeployError(
                f"project {self.plan.project!r} not found (404): check --project "
                "or UBIOPS_PROJECT, and that the token belongs to its organization"
            )

    def _check_instance_type(self) -> None:
        wanted = self.plan.options.instance_type
        names: list[str] = []
        cursor: str | None = None
        while True:
            kwargs = {"limit": 100} | ({"cursor": cursor} if cursor else {})
            with self.errors("list instance types"):
                page = self.api.instance_type_groups_list(self.plan.project, **kwargs)
            names += [str(group.name) for group in page.results or ()]
            cursor = cursor_of(page.next)
            if not cursor:
                break
        if wanted not in names:
            available = ", ".join(repr(n) for n in sorted(names)) or "none"
            raise DeployError(
                f"instance type {wanted!r} is not available in project {self.plan.project!r}; "
                f"it has: {available}"
            )
        for warning in self.plan.warnings:
            self.out(f"warning: {warning}")

    # -- deployment and version ----------------------------------------------------------------

    def _ensure_deployment(self) -> None:
        plan = self.plan
        current = self.get(
            "get deployment", self.api.deployments_get, plan.project, plan.deployment
        )
        if current is None:
            data = self.ubiops.DeploymentCreate(
                name=plan.deployment,
                description=DEPLOYMENT_DESCRIPTION,
                labels={LABEL_MANAGED_BY: MANAGED_BY},
                supports_request_format=True,
                input_type="plain",
                output_type="plain",
            )
            with self.errors("create deployment"):
                self.api.deployments_create(plan.project, data)
            self.changed(f"created: deployment {plan.deployment}")
            return
        if (
            current.input_type != "plain"
            or current.output_type != "plain"
            or current.supports_request_format is False
        ):
            raise DeployError(
                f"deployment {plan.deployment!r} exists with {current.input_type} input, "
                f"{current.output_type} output, supports_request_format="
                f"{current.supports_request_format}; the OpenAI-compatible endpoint needs plain "
                "input and output with the request format: delete it or pass another --deployment"
            )
        self.same(f"deployment {plan.deployment}")

    def _ensure_version(self, current: Any, tag: str) -> tuple[Any, bool]:
        plan = self.plan
        o = plan.options
        ub = self.ubiops
        desired: dict[str, Any] = {
            "environment_name": plan.environment,
            "environment_tag": tag,
            "instance_type_group_name": o.instance_type,
            "minimum_instances": o.min_instances,
            "maximum_instances": o.max_instances,
            "maximum_idle_time": o.max_idle_time,
            "instance_processes": o.instance_processes,
        }
        ports = [
            ub.DeploymentVersionPort(
                public_port=p.public_port, deployment_port=p.deployment_port, protocol=p.protocol
            )
            for p in plan.ports
        ]
        health = (
            ub.HealthCheck(port=plan.service.port, path=plan.service.health_check_path)
            if plan.service
            else None
        )
        name = f"version {plan.deployment}/{plan.version}"
        if current is None:
            data = ub.DeploymentVersionCreate(
                version=plan.version,
                labels=dict(plan.labels),
                ports=ports,
                health_check=health,
                **desired,
            )
            with self.errors("create version"):
                created = self.api.deployment_versions_create(plan.project, plan.deployment, data)
            self.changed(f"created: {name}")
            return created, True
        changes = {k: v for k, v in desired.items() if getattr(current, k) != v}
        labels = dict(current.labels or {})
        if any(labels.get(k) != v for k, v in plan.labels.items()):
            changes["labels"] = labels | plan.labels
        if _port_set(current.ports) != _port_set(ports):
            changes["ports"] = ports
        if health is not None and _health_of(current.health_check) != _health_of(health):
            changes["health_check"] = health
        if not changes:
            self.same(name)
            return current, False
        with self.errors("update version"):
            updated = self.api.deployment_versions_update(
                plan.project, plan.deployment, plan.version, ub.DeploymentVersionUpdate(**changes)
            )
        self.changed(f"updated: {name} ({', '.join(sorted(changes))})")
        return updated, True

    # -- deployment package and build ----------------------------------------------------------

    def _ensure_package(self, version: Any, *, wait: bool) -> None:
        plan = self.plan
        with tempfile.TemporaryDirectory(prefix="proxy-deploy-") as tmp:
            archive = Path(tmp) / "deployment_package.zip"
            digest = write_package_zip(plan.options.package_dir, archive)[:PACKAGE_HASH_CHARS]
            labels = dict(version.labels or {})
            if labels.get(LABEL_PACKAGE_HASH) == digest:
                self.same(f"deployment package (sha256 {digest[:12]})")
                revision = None
            else:
                with self.errors("upload the deployment package"):
                    created = self.api.revisions_file_upload(
                        plan.project,
                        plan.deployment,
                        plan.version,
                        file=str(archive),
                        _progress_bar=sys.stderr.isatty(),
                    )
                revision = str(created.revision)
                self.changed(f"uploaded: deployment package (sha256 {digest[:12]}, {revision})")
        if revision is None and not (wait and version.latest_revision):
            return
        self._wait_for_version(revision)
        if revision is not None:
            data = self.ubiops.DeploymentVersionUpdate(labels=labels | {LABEL_PACKAGE_HASH: digest})
            with self.errors("label the version with the package hash"):
                self.api.deployment_versions_update(
                    plan.project, plan.deployment, plan.version, data
                )

    def _wait_for_version(self, revision: str | None) -> None:
        plan = self.plan
        query = f"| deployment_name=`{plan.deployment}` and deployment_version=`{plan.version}`"
        if revision:
            query += f" and deployment_version_revision_id=`{revision}`"

        def status() -> tuple[str, str | None] | None:
            version = self.get(
                "get version",
                self.api.deployment_versions_get,
                plan.project,
                plan.deployment,
                plan.version,
            )
            built = revision or getattr(version, "latest_revision", None)
            if not built:
                return None
            with self.errors("get revision"):
                found = self.api.revisions_get(plan.project, plan.deployment, built, plan.version)
            return str(found.status), found.error_message

        wait_for_build(
            self,
            Build(
                what=f"version {plan.version}",
                wait=lambda: self.ubiops.utils.wait_for_deployment_version(
                    self.api.api_client,
                    plan.project,
                    plan.deployment,
                    plan.version,
                    revision_id=revision,
                    timeout=plan.options.timeout,
                ),
                status=status,
                log_query=query,
            ),
        )
        self.out(f"ready: version {plan.deployment}/{plan.version}")


def _port_set(ports: Any) -> set[tuple[int, int, str]]:
    return {
        (
            int(_field(p, "public_port")),
            int(_field(p, "deployment_port")),
            str(_field(p, "protocol")),
        )
        for p in ports or ()
    }


def _health_of(check: Any) -> tuple[Any, Any]:
    return (_field(check, "path"), _field(check, "port")) if check else (None, None)


def _field(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, Mapping) else getattr(item, name, None)
