"""The desired state of a UbiOps deployment, computed from the command's options (pure).

Nothing here talks to the network or runs a program: :func:`make_plan` validates the options and
derives every value the deployment should end up with (labels, environment variables, ports,
service), and :meth:`Plan.describe` renders it for ``--dry-run``. :mod:`proxy.deploy.apply` then
compares this state with what the API reports and changes only what differs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from proxy.catalog import Catalog, CatalogError
from proxy.deploy.errors import DeployError

__all__ = [
    "DEFAULT_API_HOST",
    "DEPLOYMENT_DESCRIPTION",
    "ENGINES",
    "ENVIRONMENT_DESCRIPTION",
    "LABEL_MANAGED_BY",
    "LABEL_OPENAI_COMPATIBLE",
    "LABEL_OPENAI_MODEL_NAMES",
    "LABEL_PACKAGE_HASH",
    "MANAGED_BY",
    "PROXY_API_KEY",
    "PROXY_PORT",
    "READINESS_PATH",
    "BuildSpec",
    "Options",
    "Plan",
    "Port",
    "ServiceSpec",
    "make_plan",
]

DEFAULT_API_HOST = "https://api.ubiops.com/v2"
"""The pinned ``ubiops`` client's own default (4.15 is generated for API v2, whose environment
tags this command uses; UbiOps' older pages show ``/v2.1``). ``--api-host`` overrides it."""
PROXY_PORT = 11434
READINESS_PATH = "/readyz"
PROXY_API_KEY = "PROXY_API_KEY"
LABEL_OPENAI_COMPATIBLE = "openai-compatible"
LABEL_OPENAI_MODEL_NAMES = "openai-model-names"
LABEL_MANAGED_BY = "managed-by"
MANAGED_BY = "proxy-deploy"
"""The label (``managed-by: proxy-deploy``) on everything the command creates; ``--delete``
removes only what carries it (or the description the command writes)."""
ENVIRONMENT_DESCRIPTION = "Ollama and the OpenAI-compatible proxy (managed by proxy.deploy)"
DEPLOYMENT_DESCRIPTION = "Ollama models behind an OpenAI-compatible proxy"
LABEL_PACKAGE_HASH = "deployment-package-sha256"
"""Version label holding the hash of the last deployment package that built successfully."""
PACKAGE_HASH_CHARS = 40
"""Label values are kept short (≤ 63 characters); 40 hex digits (160 bits) identify a package."""
ENGINES = ("docker", "podman")
"""What ``--build`` builds with, in order of preference when ``--engine auto``."""
CA_BUNDLE_SECRET_ID = "ca_bundle"  # noqa: S105 (the name of a build secret, not a secret)
"""The Dockerfile's build secret: a CA bundle trusted for HTTPS during the build only."""
_RESERVED_BUILD_ARGS = {
    "BASE_IMAGE": "--base-image",
    "BAKE_CHAT_MODELS": "--bake-models with --chat-models",
    "BAKE_EMBEDDING_MODELS": "--bake-models with --embedding-models",
}
_BUILD_ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_DEDICATED = "(Dedicated)"
_MAX_IDLE_RANGE = (10, 3600)


@dataclass(frozen=True, slots=True)
class Options:
    """Every option of the command, with the defaults of the command line."""

    project: str
    deployment: str = "ollama-multi-model-server"
    version: str = "v1"
    environment: str = "ollama-env"
    instance_type: str = "16384 MB + 4 vCPU (Dedicated)"
    instance_processes: int = 3
    min_instances: int = 0
    max_instances: int = 1
    max_idle_time: int = 900
    chat_models: str = "smollm2"
    embedding_models: str = "all-minilm:l6-v2"
    aliases: str = ""
    image: Path | None = None
    build: bool = False
    base_image: str | None = None
    bake_models: bool = False
    engine: str = "auto"
    ca_bundle: Path | None = None
    build_args: tuple[str, ...] = ()
    port_forward: int | None = None
    service: str | None = None
    show_api_key: bool = False
    rotate_api_key: bool = False
    dry_run: bool = False
    delete: bool = False
    yes: bool = False
    api_host: str = DEFAULT_API_HOST
    package_dir: Path = Path("deployment_package")
    context: Path = Path()
    image_output: Path = Path("build/ollama-ubiops.tar")
    timeout: int = 1800


@dataclass(frozen=True, slots=True)
class Port:
    """One opened port of the version (``DeploymentVersionPort``)."""

    public_port: int
    deployment_port: int = PROXY_PORT
    protocol: str = "tcp"


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A UbiOps Service in front of the proxy port: managed HTTPS, UbiOps token auth."""

    name: str
    port: int = PROXY_PORT
    authentication_required: bool = True
    health_check_path: str = READINESS_PATH


@dataclass(frozen=True, slots=True)
class BuildSpec:
    """How ``--build`` makes the environment image: ``build`` then ``save``, with docker or podman.

    ``engine`` is ``docker``, ``podman`` or ``auto`` (whichever is usable, chosen when the build
    runs; the command lines then default to docker's). Podman builds in Docker's image format
    (its OCI default drops ``HEALTHCHECK``) and saves a ``docker-archive``, which UbiOps takes.
    """

    context: Path
    base_image: str
    output: Path
    tag: str
    build_args: tuple[tuple[str, str], ...]
    engine: str = "auto"
    ca_bundle: Path | None = None

    def build_command(self, engine: str | None = None) -> list[str]:
        """The ``build`` command line of ``engine`` (default: :attr:`engine`, docker for auto)."""
        name = self._engine(engine)
        command = [name, "build"]
        if name == "podman":
            command += ["--format", "docker"]
        command += ["--tag", self.tag]
        if self.ca_bundle is not None:
            command += ["--secret", f"id={CA_BUNDLE_SECRET_ID},src={self.ca_bundle}"]
        for arg_name, value in self.build_args:
            command += ["--build-arg", f"{arg_name}={value}"]
        return [*command, str(self.context)]

    def save_command(self, engine: str | None = None) -> list[str]:
        """The ``save`` command line that writes the image archive to upload."""
        name = self._engine(engine)
        archive_format = ["--format", "docker-archive"] if name == "podman" else []
        return [name, "save", *archive_format, "--output", str(self.output), self.tag]

    def _engine(self, engine: str | None) -> str:
        name = engine or self.engine
        return ENGINES[0] if name == "auto" else name


@dataclass(frozen=True, slots=True)
class Plan:
    """The desired state: what the project should contain after the command ran."""

    options: Options
    catalog: Catalog
    labels: dict[str, str]
    plain_env: dict[str, str]
    ports: tuple[Port, ...]
    service: ServiceSpec | None
    build: BuildSpec | None
    warnings: tuple[str, ...] = field(default=())

    @property
    def project(self) -> str:
        return self.options.project

    @property
    def deployment(self) -> str:
        return self.options.deployment

    @property
    def version(self) -> str:
        return self.options.version

    @property
    def environment(self) -> str:
        return self.options.environment

    def describe(self) -> list[str]:
        """The plan as text, for ``--dry-run``; shows no secret."""
        o = self.options
        if o.image is not None:
            image = f"upload {o.image}"
        elif self.build is not None:
            image = (
                f"{' '.join(self.build.build_command())} && {' '.join(self.build.save_command())}"
            )
            if self.build.engine == "auto":
                image += " (or podman build --format docker / podman save --format docker-archive "
                image += "when docker is not usable)"
        else:
            image = (
                "keep the image the version (or environment) already uses; a first deploy "
                "needs --build or --image"
            )
        env = [f"{name}={value!r}" for name, value in self.plain_env.items()]
        key = "rotated" if o.rotate_api_key else "kept if present, else generated"
        env.append(f"{PROXY_API_KEY}=<secret, {key}>")
        ports = ", ".join(
            f"{p.public_port} -> {p.deployment_port}/{p.protocol}" for p in self.ports
        )
        service = (
            f"{self.service.name} on port {self.service.port} (authentication required, "
            f"health check {self.service.health_check_path})"
            if self.service
            else "none"
        )
        return [
            f"project: {o.project} at {o.api_host}",
            f"environment: {o.environment} (image: {image})",
            f"deployment: {o.deployment} (plain input/output, supports_request_format)",
            f"version: {o.version} (instance type {o.instance_type!r}, "
            f"{o.instance_processes} processes, {o.min_instances}..{o.max_instances} instances, "
            f"idle {o.max_idle_time} s)",
            "labels: " + ", ".join(f"{k}={v}" for k, v in self.labels.items()),
            "environment variables: " + ", ".join(env),
            f"deployment package: {o.package_dir} (uploaded when its hash changed)",
            f"ports: {ports or 'none'}",
            f"service: {service}",
            *(f"warning: {w}" for w in self.warnings),
        ]


def make_plan(options: Options) -> Plan:
    """Validate ``options`` and derive the desired state.

    Raises:
        DeployError: inconsistent options or model lists, naming what is wrong.
    """
    o = options
    _check_options(o)
    try:
        catalog = Catalog.parse(o.chat_models, o.embedding_models, o.aliases)
        model_names = catalog.openai_model_names()
    except CatalogError as exc:
        raise DeployError(f"{_option_of(exc.variable)}: {exc.problem}") from None
    if not len(catalog):
        raise DeployError("no models: pass --chat-models and/or --embedding-models")
    ports = (Port(public_port=o.port_forward),) if o.port_forward is not None else ()
    service = ServiceSpec(name=o.service) if o.service else None
    plain_env = {
        "OLLAMA_CHAT_MODELS": ",".join(m.configured_as for m in catalog if not m.is_embedding),
        "OLLAMA_EMBEDDING_MODELS": ",".join(m.configured_as for m in catalog if m.is_embedding),
        "MODEL_ALIASES": ";".join(f"{alias}={target}" for alias, target in catalog.aliases),
        "PROXY_HOST": "0.0.0.0" if ports or service else "127.0.0.1",
    }
    warnings = []
    if _DEDICATED not in o.instance_type:
        warnings.append(
            f"instance type {o.instance_type!r} is not a {_DEDICATED} type; UbiOps runs custom "
            "(bring-your-own) images only on dedicated instance types"
        )
    if not o.bake_models and not o.delete:
        warnings.append(
            "the models are not baked into the image (--build --bake-models), unless the image "
            "you pass already holds them: every cold start then pulls them before the instance "
            "serves, requests meanwhile fail saying so, and a direct request's timeout (default "
            "300 s, at most 3600 s) includes that cold start"
        )
    if ports:
        rest = (
            "with --min-instances 0 none runs at rest, so nothing answers until a request "
            "starts one"
            if o.min_instances == 0
            else f"--min-instances {o.min_instances} keeps that many running"
        )
        warnings.append(
            f"the forwarded port {ports[0].public_port} answers only while an instance runs "
            f"({rest}), and each instance has its own address (printed below: how to find it)"
        )
    return Plan(
        options=o,
        catalog=catalog,
        labels={
            LABEL_OPENAI_COMPATIBLE: "true",
            LABEL_OPENAI_MODEL_NAMES: model_names,
            LABEL_MANAGED_BY: MANAGED_BY,
        },
        plain_env=plain_env,
        ports=ports,
        service=service,
        build=_build_spec(o, plain_env) if o.build else None,
        warnings=tuple(warnings),
    )


def _check_options(o: Options) -> None:
    if not o.project:
        raise DeployError("no project: pass --project or set UBIOPS_PROJECT")
    if o.image is not None and o.build:
        raise DeployError("--image and --build exclude each other")
    if o.yes and not o.delete:
        raise DeployError("--yes confirms --delete; pass it with --delete")
    if o.delete:
        excluded = [
            option
            for option, value in (
                ("--image", o.image is not None),
                ("--build", o.build),
                ("--port-forward", o.port_forward is not None),
                ("--service", o.service is not None),
                ("--rotate-api-key", o.rotate_api_key),
            )
            if value
        ]
        if excluded:
            raise DeployError(f"--delete removes the deployment; it takes no {', '.join(excluded)}")
    if o.build and not o.base_image:
        raise DeployError(
            "--build needs --base-image: the UbiOps base image with the request agent, e.g. "
            "<registry>/ubiops-deployment-instance-ubuntu24.04-python3.13:v5.17.2"
        )
    if o.bake_models and not o.build:
        raise DeployError("--bake-models needs --build")
    for option, given in (
        ("--engine", o.engine != "auto"),
        ("--ca-bundle", o.ca_bundle is not None),
        ("--build-arg", bool(o.build_args)),
    ):
        if given and not o.build:
            raise DeployError(f"{option} needs --build")
    if o.engine not in ("auto", *ENGINES):
        raise DeployError(f"--engine must be auto, {' or '.join(ENGINES)}")
    for arg in o.build_args:
        arg_name, sep, _ = arg.partition("=")
        if not sep or not _BUILD_ARG_NAME.fullmatch(arg_name):
            raise DeployError(f"--build-arg {arg!r}: expected NAME=VALUE")
        if arg_name in _RESERVED_BUILD_ARGS:
            raise DeployError(
                f"--build-arg {arg_name}: set by the command; use {_RESERVED_BUILD_ARGS[arg_name]}"
            )
    if o.instance_processes < 1:
        raise DeployError("--instance-processes must be at least 1")
    if o.min_instances < 0 or o.max_instances < 1 or o.min_instances > o.max_instances:
        raise DeployError(
            "instances: need 0 <= --min-instances <= --max-instances and --max-instances >= 1"
        )
    low, high = _MAX_IDLE_RANGE
    if not low <= o.max_idle_time <= high:
        raise DeployError(f"--max-idle-time must be between {low} and {high} seconds")
    if o.port_forward is not None and not 1 <= o.port_forward <= 65535:
        raise DeployError("--port-forward: the public port must be between 1 and 65535")


def _build_spec(o: Options, plain_env: dict[str, str]) -> BuildSpec:
    args = [("BASE_IMAGE", o.base_image or "")]
    if o.bake_models:
        args += [
            ("BAKE_CHAT_MODELS", plain_env["OLLAMA_CHAT_MODELS"]),
            ("BAKE_EMBEDDING_MODELS", plain_env["OLLAMA_EMBEDDING_MODELS"]),
        ]
    for arg in o.build_args:
        arg_name, _, value = arg.partition("=")
        args.append((arg_name, value))
    return BuildSpec(
        context=o.context,
        base_image=o.base_image or "",
        output=o.image_output,
        tag=f"{o.environment}:latest",
        build_args=tuple(args),
        engine=o.engine,
        ca_bundle=o.ca_bundle,
    )


def _option_of(variable: str) -> str:
    return {
        "OLLAMA_CHAT_MODELS": "--chat-models",
        "OLLAMA_EMBEDDING_MODELS": "--embedding-models",
        "MODEL_ALIASES": "--aliases",
    }.get(variable, variable)
