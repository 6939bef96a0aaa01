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

import secrets
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlsplit

from proxy.deploy.errors import DeployError
from proxy.deploy.package import build_image, image_identity, write_package_zip
from proxy.deploy.plan import LABEL_PACKAGE_HASH, PACKAGE_HASH_CHARS, PROXY_API_KEY, Plan
from proxy.deploy.token import authorization_header

__all__ = ["Deployer", "Outcome", "connect"]

_SUCCESS = frozenset({"available", "completed", "confirmation", "success"})
_FAILED = frozenset({"failed", "cancelled"})
_OWN_VARIABLE = frozenset({"", "version", "deployment_version"})
_LOG_TAIL = 20
_LOG_LIMIT = 1000
_MESSAGE_CHARS = 300
_TAG_PREFIX = "img-"
_TAG_HEX = 16


@dataclass
class Outcome:
    """What a run did: one line per change, the generated API key and the service URL."""

    changes: list[str] = field(default_factory=list)
    api_key: str | None = None
    service_url: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def connect(host: str, token: str) -> Any:
    """Return a ``ubiops.CoreApi`` for ``host`` authenticated with the bare ``token``.

    Raises:
        DeployError: the ``ubiops`` client is not installed.
    """
    try:
        import ubiops
    except ImportError:
        raise DeployError(
            "the ubiops client is not installed: run through scripts/deploy.sh or "
            "`uv run --extra deploy python -m proxy.deploy`"
        ) from None
    configuration = ubiops.Configuration(
        host=host.rstrip("/"), api_key={"Authorization": authorization_header(token)}
    )
    return ubiops.CoreApi(ubiops.ApiClient(configuration))


class Deployer:
    """Brings one project to the state of a :class:`Plan`; see the module docstring.

    ``api`` is a ``ubiops.CoreApi``. Progress lines go to ``out`` (stdout by default). Nothing
    printed or raised contains the UbiOps token or the proxy API key, except the key that
    :attr:`Outcome.api_key` returns to the caller.
    """

    def __init__(self, plan: Plan, api: Any, *, out: Callable[[str], None] = print) -> None:
        import ubiops
        from ubiops.utils.exceptions import StatusError

        self.plan = plan
        self.api = api
        self._ubiops = ubiops
        self._status_error: type[Exception] = StatusError
        self._out = out
        self._outcome = Outcome()

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
        version_before = self._get(
            "get version",
            self.api.deployment_versions_get,
            plan.project,
            plan.deployment,
            plan.version,
        )
        archive = self._image_archive()
        self._ensure_environment(archive)
        tag = self._ensure_image(version_before, archive)
        self._ensure_deployment()
        version, version_changed = self._ensure_version(version_before, tag)
        variables_changed = self._ensure_variables()
        self._ensure_package(version, wait=version_changed or variables_changed)
        if plan.service is not None:
            self._ensure_service()
        return self._outcome

    # -- checks --------------------------------------------------------------------------------

    def _check_project(self) -> None:
        if self._get("get project", self.api.projects_get, self.plan.project) is None:
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
            with self._errors("list instance types"):
                page = self.api.instance_type_groups_list(self.plan.project, **kwargs)
            names += [str(group.name) for group in page.results or ()]
            cursor = _cursor_of(page.next)
            if not cursor:
                break
        if wanted not in names:
            available = ", ".join(repr(n) for n in sorted(names)) or "none"
            raise DeployError(
                f"instance type {wanted!r} is not available in project {self.plan.project!r}; "
                f"it has: {available}"
            )
        for warning in self.plan.warnings:
            self._out(f"warning: {warning}")

    # -- environment and image -----------------------------------------------------------------

    def _image_archive(self) -> Path | None:
        """The image archive to upload: ``--image``, or what ``--build`` produced (before any
        change is made in the project, so a failing build leaves it untouched)."""
        if self.plan.build is not None:
            return build_image(self.plan.build)
        return self.plan.options.image

    def _ensure_environment(self, archive: Path | None) -> None:
        plan = self.plan
        current = self._get(
            "get environment", self.api.environments_get, plan.project, plan.environment
        )
        if current is not None:
            self._same(f"environment {plan.environment}")
            return
        if archive is None:
            raise DeployError(
                f"environment {plan.environment!r} does not exist: pass --image <docker save "
                "archive> or --build to create it"
            )
        data = self._ubiops.EnvironmentCreate(
            name=plan.environment,
            description="Ollama and the OpenAI-compatible proxy (managed by proxy.deploy)",
        )
        with self._errors("create environment"):
            self.api.environments_create(plan.project, data)
        self._changed(f"created: environment {plan.environment}")

    def _ensure_image(self, version: Any, archive: Path | None) -> str:
        """Return the environment tag the version should use, uploading the image if new."""
        plan = self.plan
        if archive is None:
            return self._current_tag(version)
        tag = _TAG_PREFIX + image_identity(archive)[:_TAG_HEX]
        label = f"environment image {plan.environment}:{tag}"
        current = self._get(
            "get environment tag",
            self.api.environment_tags_get,
            plan.project,
            plan.environment,
            tag,
        )
        if current is not None and current.status in _SUCCESS:
            if current.supports_request_format is False:
                data = self._ubiops.EnvironmentTagUpdate(supports_request_format=True)
                with self._errors("update environment tag"):
                    self.api.environment_tags_update(plan.project, plan.environment, tag, data)
                self._changed(f"updated: {label} (supports_request_format)")
            else:
                self._same(label)
            return tag
        if current is None:
            data = self._ubiops.EnvironmentTagCreate(name=tag, supports_request_format=True)
            with self._errors("create environment tag"):
                self.api.environment_tags_create(plan.project, plan.environment, data)
        self._out(f"uploading {archive} to {label} ...")
        with self._errors("upload the environment image"):
            self.api.environment_tags_build(
                plan.project,
                plan.environment,
                tag,
                file=str(archive),
                _progress_bar=sys.stderr.isatty(),
            )
        self._changed(f"uploaded: {label}")
        self._wait_for_environment(tag)
        return tag

    def _current_tag(self, version: Any) -> str:
        plan = self.plan
        same_environment = version is not None and version.environment_name == plan.environment
        if same_environment and version.environment_tag:
            return str(version.environment_tag)
        with self._errors("list environment tags"):
            tags = self.api.environment_tags_list(plan.project, plan.environment)
        built = [t for t in tags or () if t.status in _SUCCESS and t.supports_request_format]
        if not built:
            raise DeployError(
                f"environment {plan.environment!r} has no built image that supports the "
                "request format: pass --image or --build"
            )
        return str(max(built, key=lambda t: str(t.creation_date or "")).name)

    def _wait_for_environment(self, tag: str) -> None:
        plan = self.plan
        try:
            with self._errors("wait for the environment build"):
                self._ubiops.utils.wait_for_environment(
                    self.api.api_client,
                    plan.project,
                    plan.environment,
                    tag_name=tag,
                    timeout=plan.options.timeout,
                )
        except self._status_error as exc:
            self._raise_build_failure(f"environment image {plan.environment}:{tag}", exc, tag=tag)
        current = self._get(
            "get environment tag",
            self.api.environment_tags_get,
            plan.project,
            plan.environment,
            tag,
        )
        if current is None or current.status not in _SUCCESS:
            status = getattr(current, "status", "missing")
            raise DeployError(f"environment image {tag} did not finish building (status {status})")

    # -- deployment and version ----------------------------------------------------------------

    def _ensure_deployment(self) -> None:
        plan = self.plan
        current = self._get(
            "get deployment", self.api.deployments_get, plan.project, plan.deployment
        )
        if current is None:
            data = self._ubiops.DeploymentCreate(
                name=plan.deployment,
                description="Ollama models behind an OpenAI-compatible proxy",
                supports_request_format=True,
                input_type="plain",
                output_type="plain",
            )
            with self._errors("create deployment"):
                self.api.deployments_create(plan.project, data)
            self._changed(f"created: deployment {plan.deployment}")
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
        self._same(f"deployment {plan.deployment}")

    def _ensure_version(self, current: Any, tag: str) -> tuple[Any, bool]:
        plan = self.plan
        o = plan.options
        ub = self._ubiops
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
            with self._errors("create version"):
                created = self.api.deployment_versions_create(plan.project, plan.deployment, data)
            self._changed(f"created: {name}")
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
            self._same(name)
            return current, False
        with self._errors("update version"):
            updated = self.api.deployment_versions_update(
                plan.project, plan.deployment, plan.version, ub.DeploymentVersionUpdate(**changes)
            )
        self._changed(f"updated: {name} ({', '.join(sorted(changes))})")
        return updated, True

    # -- environment variables -----------------------------------------------------------------

    def _ensure_variables(self) -> bool:
        plan = self.plan
        with self._errors("list environment variables"):
            listed = self.api.deployment_version_environment_variables_list(
                plan.project, plan.deployment, plan.version
            )
        own = {v.name: v for v in listed or () if (v.inheritance_type or "") in _OWN_VARIABLE}
        changed = False
        for name, value in plan.plain_env.items():
            changed |= self._ensure_variable(own.get(name), name, value, secret=False)
        key = own.get(PROXY_API_KEY)
        if key is None or plan.options.rotate_api_key:
            self._outcome.api_key = secrets.token_urlsafe(32)
            changed |= self._ensure_variable(key, PROXY_API_KEY, self._outcome.api_key, secret=True)
        elif not key.secret:
            value = str(key.value or "") or secrets.token_urlsafe(32)
            changed |= self._ensure_variable(key, PROXY_API_KEY, value, secret=True)
        else:
            self._same(f"environment variable {PROXY_API_KEY} (secret)")
        return changed

    def _ensure_variable(self, current: Any, name: str, value: str, *, secret: bool) -> bool:
        plan = self.plan
        scope = (plan.project, plan.deployment)
        label = f"environment variable {name}" + (" (secret)" if secret else "")
        if current is not None and not value:
            with self._errors(f"delete {label}"):
                self.api.deployment_version_environment_variables_delete(
                    *scope, current.id, plan.version
                )
            self._changed(f"deleted: {label}")
            return True
        if current is None and not value:
            return False
        data = self._ubiops.EnvironmentVariableCreate(name=name, value=value, secret=secret)
        if current is None:
            with self._errors(f"create {label}"):
                self.api.deployment_version_environment_variables_create(*scope, plan.version, data)
            self._changed(f"created: {label}")
            return True
        if secret or bool(current.secret) != secret or current.value != value:
            with self._errors(f"update {label}"):
                self.api.deployment_version_environment_variables_update(
                    *scope, current.id, plan.version, data
                )
            self._changed(f"updated: {label}")
            return True
        self._same(label)
        return False

    # -- deployment package and build ----------------------------------------------------------

    def _ensure_package(self, version: Any, *, wait: bool) -> None:
        plan = self.plan
        with tempfile.TemporaryDirectory(prefix="proxy-deploy-") as tmp:
            archive = Path(tmp) / "deployment_package.zip"
            digest = write_package_zip(plan.options.package_dir, archive)[:PACKAGE_HASH_CHARS]
            labels = dict(version.labels or {})
            if labels.get(LABEL_PACKAGE_HASH) == digest:
                self._same(f"deployment package (sha256 {digest[:12]})")
                revision = None
            else:
                with self._errors("upload the deployment package"):
                    created = self.api.revisions_file_upload(
                        plan.project,
                        plan.deployment,
                        plan.version,
                        file=str(archive),
                        _progress_bar=sys.stderr.isatty(),
                    )
                revision = str(created.revision)
                self._changed(f"uploaded: deployment package (sha256 {digest[:12]}, {revision})")
        if revision is None and not (wait and version.latest_revision):
            return
        self._wait_for_version(revision)
        if revision is not None:
            data = self._ubiops.DeploymentVersionUpdate(
                labels=labels | {LABEL_PACKAGE_HASH: digest}
            )
            with self._errors("label the version with the package hash"):
                self.api.deployment_versions_update(
                    plan.project, plan.deployment, plan.version, data
                )

    def _wait_for_version(self, revision: str | None) -> None:
        plan = self.plan
        try:
            with self._errors("wait for the deployment version"):
                self._ubiops.utils.wait_for_deployment_version(
                    self.api.api_client,
                    plan.project,
                    plan.deployment,
                    plan.version,
                    revision_id=revision,
                    timeout=plan.options.timeout,
                )
        except self._status_error as exc:
            self._raise_build_failure(f"version {plan.version}", exc, revision=revision)
        version = self._get(
            "get version",
            self.api.deployment_versions_get,
            plan.project,
            plan.deployment,
            plan.version,
        )
        revision = revision or getattr(version, "latest_revision", None)
        if revision:
            with self._errors("get revision"):
                built = self.api.revisions_get(
                    plan.project, plan.deployment, revision, plan.version
                )
            if built.status not in _SUCCESS:
                if built.status in _FAILED:
                    self._raise_build_failure(
                        f"deployment package revision {revision}",
                        built.error_message or built.status,
                        revision=revision,
                    )
                raise DeployError(
                    f"revision {revision} did not finish building (status {built.status}); "
                    "run the command again to keep waiting"
                )
        self._out(f"ready: version {plan.deployment}/{plan.version}")

    def _raise_build_failure(
        self, what: str, reason: object, *, revision: str | None = None, tag: str | None = None
    ) -> NoReturn:
        plan = self.plan
        if tag is not None:
            query = f"| environment_name=`{plan.environment}` and environment_tag=`{tag}`"
        else:
            query = f"| deployment_name=`{plan.deployment}` and deployment_version=`{plan.version}`"
            if revision:
                query += f" and deployment_version_revision_id=`{revision}`"
        tail = self._log_tail(query)
        detail = [f"--- last {len(tail)} build log lines ---", *tail] if tail else []
        message = str(reason).strip().splitlines()[-1] if str(reason).strip() else "failed"
        raise DeployError(f"build of {what} failed: {message}", detail)

    def _log_tail(self, query: str) -> list[str]:
        try:
            logs = self.api.logs_list(self.plan.project, query=query, limit=_LOG_LIMIT)
        except self._ubiops.ApiException:
            return []
        lines = [str(entry.log).rstrip("\n") for entry in logs or () if entry.log]
        return lines[-_LOG_TAIL:]

    # -- service -------------------------------------------------------------------------------

    def _ensure_service(self) -> None:
        plan = self.plan
        spec = plan.service
        assert spec is not None
        desired = {
            "deployment": plan.deployment,
            "version": plan.version,
            "port": spec.port,
            "authentication_required": spec.authentication_required,
            # UbiOps checks the token and drops the header, so the proxy sees only x-api-key.
            "authentication_header_pass_through": False,
        }
        current = self._get("get service", self.api.services_get, plan.project, spec.name)
        if current is None:
            data = self._ubiops.ServiceCreate(
                name=spec.name, description=f"proxy of {plan.deployment}/{plan.version}", **desired
            )
            with self._errors("create service"):
                current = self.api.services_create(plan.project, data)
            self._changed(f"created: service {spec.name}")
        else:
            changes = {k: v for k, v in desired.items() if getattr(current, k) != v}
            if changes:
                with self._errors("update service"):
                    current = self.api.services_update(
                        plan.project, spec.name, self._ubiops.ServiceUpdate(**changes)
                    )
                self._changed(f"updated: service {spec.name} ({', '.join(sorted(changes))})")
            else:
                self._same(f"service {spec.name}")
        endpoint = getattr(current, "endpoint", None)
        self._outcome.service_url = str(endpoint or f"https://{current.id}.services.ubiops.com")

    # -- helpers -------------------------------------------------------------------------------

    def _get(self, what: str, method: Callable[..., Any], *args: Any) -> Any:
        """Call a ``*_get`` method; ``None`` when the object does not exist (404)."""
        with self._errors(what):
            try:
                return method(*args)
            except self._ubiops.ApiException as exc:
                if exc.status == 404:
                    return None
                raise

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn an API exception raised inside into a one-line :class:`DeployError`."""
        try:
            yield
        except self._ubiops.ApiException as exc:
            raise DeployError(_api_message(what, exc, self.plan)) from None

    def _changed(self, line: str) -> None:
        self._outcome.changes.append(line)
        self._out(line)

    def _same(self, what: str) -> None:
        self._out(f"up to date: {what}")


def _api_message(what: str, exc: Any, plan: Plan) -> str:
    status = getattr(exc, "status", None)
    if status == 401:
        return "the UbiOps API rejected the token (401 Unauthorized): check UBIOPS_API_TOKEN"
    if status == 403:
        return (
            f"{what}: permission denied (403) in project {plan.project!r}: give the token's "
            "service user a role that allows it"
        )
    if status == 504 and "Timeout" in str(getattr(exc, "reason", "")):
        return f"{what}: gave up after {plan.options.timeout} s (raise --timeout to wait longer)"
    if not status:
        reason = str(getattr(exc, "reason", "") or exc).strip().splitlines() or ["no answer"]
        return f"cannot reach the UbiOps API at {plan.options.api_host}: {reason[-1]}"
    try:
        body = str(exc.get_body_message() or "")
    except Exception:  # a body the client cannot parse is still an error worth naming
        body = ""
    detail = " ".join(body.split())[:_MESSAGE_CHARS]
    return f"{what} failed: {status} {getattr(exc, 'reason', '')}".rstrip() + (
        f": {detail}" if detail else ""
    )


def _cursor_of(next_url: object) -> str | None:
    """The ``cursor`` query parameter of a paginated response's ``next`` link."""
    if not next_url:
        return None
    values = parse_qs(urlsplit(str(next_url)).query).get("cursor")
    return values[0] if values else None


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
