"""``--delete``: remove what the command created, as the tutorial's last section does by hand.

In this order: the Services in front of the version, the version, the deployment (when it has no
other version), the environment (when no other version uses any of its images). Only objects the
command created are removed: those labelled ``managed-by: proxy-deploy``, or carrying the
description (or the package-hash label) the command writes. Whatever is kept is named with the
reason. Nothing is removed before the caller confirmed the list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.deploy.errors import DeployError
from proxy.deploy.plan import (
    DEPLOYMENT_DESCRIPTION,
    ENVIRONMENT_DESCRIPTION,
    LABEL_MANAGED_BY,
    LABEL_PACKAGE_HASH,
    MANAGED_BY,
    Plan,
)
from proxy.deploy.session import Outcome, Session

__all__ = ["Remover", "describe_removal"]

Confirm = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class _Target:
    """One object to delete: how to name it and the call that deletes it."""

    name: str
    delete: Callable[[], object]


def describe_removal(plan: Plan) -> list[str]:
    """What ``--delete`` would do, for ``--dry-run`` (which calls nothing, so it cannot know
    what exists)."""
    return [
        f"project: {plan.project} at {plan.options.api_host}",
        "after a confirmation (or --yes), delete what deploy.sh created, when it exists:",
        f"  the services in front of version {plan.deployment}/{plan.version}",
        f"  version {plan.deployment}/{plan.version}",
        f"  deployment {plan.deployment}, unless it has other versions",
        f"  environment {plan.environment} (or the one the version uses), unless another "
        "version uses it",
        "objects deploy.sh did not create are kept and named",
    ]


class Remover(Session):
    """Removes the plan's service(s), version, deployment and environment; see the module doc."""

    def run(self, confirm: Confirm) -> Outcome:
        """Survey, report, ask ``confirm`` (with the question to show), then delete.

        Raises:
            DeployError: the project is missing, the deletion was not confirmed, or an API
                call failed.
        """
        plan = self.plan
        if self.get("get project", self.api.projects_get, plan.project) is None:
            raise DeployError(f"project {plan.project!r} not found (404): check --project")
        targets = self._survey()
        if not targets:
            self.out("nothing to delete")
            return self.outcome
        self.out("to delete: " + ", ".join(target.name for target in targets))
        if not confirm(f"Delete these {len(targets)} object(s) from project {plan.project}?"):
            raise DeployError("not confirmed: nothing was deleted")
        for target in targets:
            with self.errors(f"delete {target.name}"):
                target.delete()
            self.changed(f"deleted: {target.name}")
        return self.outcome

    def _survey(self) -> list[_Target]:
        plan = self.plan
        api = self.api
        project, deployment, version_name = plan.project, plan.deployment, plan.version
        label = f"version {deployment}/{version_name}"
        version = self.get(
            "get version", api.deployment_versions_get, project, deployment, version_name
        )
        targets: list[_Target] = []
        foreign_services = []
        for service in self._services_of_version():
            if self._service_is_ours(service):
                targets.append(
                    _Target(
                        f"service {service.name}",
                        _call(api.services_delete, project, service.name),
                    )
                )
            else:
                foreign_services.append(str(service.name))
                self._keep(f"service {service.name}", "deploy.sh did not create it")
        if version is None:
            self.out(f"not found: {label}")
        elif foreign_services:
            self._keep(label, f"service {', '.join(foreign_services)} still uses it")
            return targets
        elif not _is_ours(version, LABEL_PACKAGE_HASH):
            self._keep(label, "deploy.sh did not create it")
            return targets
        else:
            targets.append(
                _Target(
                    label,
                    _call(api.deployment_versions_delete, project, deployment, version_name),
                )
            )
        targets += self._deployment_target()
        environment = str(getattr(version, "environment_name", None) or plan.environment)
        targets += self._environment_target(environment)
        return targets

    def _services_of_version(self) -> list[Any]:
        with self.errors("list services"):
            services = self.api.services_list(self.plan.project)
        return [
            s
            for s in services or ()
            if s.deployment == self.plan.deployment and s.version == self.plan.version
        ]

    def _service_is_ours(self, service: Any) -> bool:
        if (service.labels or {}).get(LABEL_MANAGED_BY) == MANAGED_BY:
            return True
        detail = self.get("get service", self.api.services_get, self.plan.project, service.name)
        expected = f"proxy of {self.plan.deployment}/{self.plan.version}"
        return detail is not None and detail.description == expected

    def _deployment_target(self) -> list[_Target]:
        plan = self.plan
        name = f"deployment {plan.deployment}"
        current = self.get(
            "get deployment", self.api.deployments_get, plan.project, plan.deployment
        )
        if current is None:
            self.out(f"not found: {name}")
            return []
        if not _is_ours(current, description=DEPLOYMENT_DESCRIPTION):
            self._keep(name, "deploy.sh did not create it")
            return []
        with self.errors("list versions"):
            versions = self.api.deployment_versions_list(plan.project, plan.deployment)
        others = sorted(str(v.version) for v in versions or () if v.version != plan.version)
        if others:
            self._keep(name, f"it has other versions: {', '.join(others)}")
            return []
        return [_Target(name, _call(self.api.deployments_delete, plan.project, plan.deployment))]

    def _environment_target(self, environment: str) -> list[_Target]:
        plan = self.plan
        name = f"environment {environment}"
        current = self.get("get environment", self.api.environments_get, plan.project, environment)
        if current is None:
            self.out(f"not found: {name}")
            return []
        if not _is_ours(current, description=ENVIRONMENT_DESCRIPTION):
            self._keep(name, "deploy.sh did not create it")
            return []
        with self.errors("list environment tags"):
            tags = self.api.environment_tags_list(plan.project, environment)
        users: set[str] = set()
        for tag in tags or ():
            with self.errors("list the usage of an environment tag"):
                usage = self.api.environment_tags_usage(plan.project, environment, tag.name)
            users |= {
                f"{use.deployment}/{use.version}"
                for use in usage or ()
                if (use.deployment, use.version) != (plan.deployment, plan.version)
            }
        if users:
            self._keep(name, f"still used by {', '.join(sorted(users))}")
            return []
        return [_Target(name, _call(self.api.environments_delete, plan.project, environment))]

    def _keep(self, what: str, why: str) -> None:
        self.out(f"keeping: {what} ({why})")


def _is_ours(item: Any, hash_label: str | None = None, *, description: str | None = None) -> bool:
    labels = getattr(item, "labels", None) or {}
    if labels.get(LABEL_MANAGED_BY) == MANAGED_BY:
        return True
    if hash_label is not None and hash_label in labels:
        return True
    return description is not None and getattr(item, "description", None) == description


def _call(method: Callable[..., object], *args: object) -> Callable[[], object]:
    return lambda: method(*args)
