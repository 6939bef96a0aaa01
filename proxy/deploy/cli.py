"""The command line of ``python -m proxy.deploy`` (and ``scripts/deploy.sh``).

Exit status: 0 when the project is in the desired state, 1 with ``error: …`` on stderr when it
could not be brought there, 2 for unusable options, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from proxy.deploy.errors import DeployError
from proxy.deploy.plan import (
    DEFAULT_API_HOST,
    ENGINES,
    PROXY_API_KEY,
    PROXY_PORT,
    Options,
    Plan,
    make_plan,
)
from proxy.deploy.remove import describe_removal
from proxy.deploy.token import TOKEN_VARIABLE, read_token

__all__ = ["main"]

_DEFAULTS = Options(project="")
_EPILOG = """\
what goes where:
  The environment image (Dockerfile) holds Ollama and the proxy package, installed from uv.lock.
  --build builds it with docker or podman, whichever is usable (docker needs its daemon; podman
  builds with --format docker, which keeps HEALTHCHECK, and saves a docker-archive).
  The deployment package zip holds only deployment_package/ (at the zip's root); its
  deployment.py imports the proxy from the image.

idempotency:
  The image is uploaded to the environment tag img-<image id>, so a built image is not uploaded
  again. The zip is reproducible; its sha256 is kept in the version label
  deployment-package-sha256 after a successful build, so an unchanged package is skipped. All
  other objects are compared field by field; a run that changes nothing says "up to date".

cold starts:
  Without --bake-models every cold start pulls the models before the instance serves; requests
  that arrive meanwhile fail at once saying so. A direct request's timeout (default 300 s, at
  most 3600 s) includes the cold start.

cleanup:
  --delete removes what this command created (labelled managed-by: proxy-deploy): the services
  in front of the version, the version, the deployment when it has no other version, and the
  environment when no other version uses it. It lists them and asks first (--yes: do not ask).

direct access:
  --port-forward and --service make the proxy listen on 0.0.0.0; it then requires PROXY_API_KEY,
  which is generated once, stored as a secret environment variable and shown only with
  --show-api-key when it is generated (or replaced with --rotate-api-key).
"""


def _shown(value: object) -> str:
    """A default as the help shows it, ``%`` escaped for argparse."""
    text = "none" if value is None or value == "" else str(value)
    return text.replace("%", "%%")


def _default(value: object) -> str:
    """The help's note on a default that is a constant: ``(default: value)``."""
    return f"(default: {_shown(value)})"


def _from_env(env: Mapping[str, str], name: str, fallback: str | None) -> tuple[str | None, str]:
    """An option's default: ``$name`` when it is set, else ``fallback``; and the help's note:
    ``(default: value, from $name)`` when set, else ``(default: $name, else fallback)``."""
    if name in env:
        return env[name], f"(default: {_shown(env[name])}, from ${name})"
    return fallback, f"(default: ${name}, else {_shown(fallback)})"


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``) and ``environ``; return the
    exit status."""
    env = os.environ if environ is None else environ
    options = _options(_parser(env).parse_args(argv), env)
    try:
        plan = make_plan(options)
        if options.dry_run:
            if options.delete:
                print("dry run: the UbiOps API is not called; --delete would:")
                lines = describe_removal(plan)
            else:
                print("dry run: the UbiOps API is not called; the desired state is:")
                lines = plan.describe()
            print("\n".join(f"  {line}" for line in lines))
            return 0
        if options.delete:
            return _delete(plan, env)
        return _deploy(plan, env)
    except DeployError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        for line in exc.detail:
            print(f"  {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _delete(plan: Plan, env: Mapping[str, str]) -> int:
    from proxy.deploy.remove import Remover
    from proxy.deploy.session import connect

    def confirm(question: str) -> bool:
        if plan.options.yes:
            return True
        if not sys.stdin.isatty():
            raise DeployError("--delete asks for confirmation: run it in a terminal or pass --yes")
        return input(f"{question} [y/N] ").strip().lower() in {"y", "yes"}

    api = connect(plan.options.api_host, read_token(env))
    try:
        outcome = Remover(plan, api).run(confirm)
    finally:
        api.api_client.close()
    print(f"done: {len(outcome.changes)} object(s) deleted" if outcome.changed else "done")
    return 0


def _deploy(plan: Plan, env: Mapping[str, str]) -> int:
    from proxy.deploy.apply import Deployer, connect
    from proxy.deploy.usage import usage_text

    api = connect(plan.options.api_host, read_token(env))
    try:
        outcome = Deployer(plan, api).run()
    finally:
        api.api_client.close()
    if outcome.changed:
        print(f"done: {len(outcome.changes)} change(s) applied")
    else:
        print("up to date: nothing to change")
    if outcome.api_key is not None:
        if plan.options.show_api_key:
            print(f"{PROXY_API_KEY}={outcome.api_key}  (shown once; stored as a secret)")
        else:
            print(
                f"generated a new {PROXY_API_KEY} and stored it as a secret; it is not shown "
                "(pass --rotate-api-key --show-api-key to set one you can see)"
            )
    elif plan.options.show_api_key:
        print(
            f"{PROXY_API_KEY} is already stored as a secret and UbiOps does not return secret "
            "values; pass --rotate-api-key --show-api-key to replace it with one you can see"
        )
    print(usage_text(plan, service_url=outcome.service_url))
    return 0


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    d = _DEFAULTS
    parser = argparse.ArgumentParser(
        prog="deploy.sh",
        description=(
            "Create or update the UbiOps environment, deployment, version, environment variables, "
            "deployment package (and optionally a service) that serve Ollama models "
            "OpenAI-compatibly. Idempotent: a second run with the same options changes nothing. "
            f"Reads the API token from {TOKEN_VARIABLE} (with or without the 'Token ' prefix)."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    project, project_note = _from_env(env, "UBIOPS_PROJECT", "")
    api_host, api_host_note = _from_env(env, "UBIOPS_API_HOST", DEFAULT_API_HOST)
    base_image, base_image_note = _from_env(env, "UBIOPS_BASE_IMAGE", None)
    chat, chat_note = _from_env(env, "OLLAMA_CHAT_MODELS", d.chat_models)
    embedding, embedding_note = _from_env(env, "OLLAMA_EMBEDDING_MODELS", d.embedding_models)
    aliases, aliases_note = _from_env(env, "MODEL_ALIASES", d.aliases)
    image_output = _project_root() / "build" / "ollama-ubiops.tar"
    package_dir = _default_package_dir()

    where = parser.add_argument_group("where")
    where.add_argument(
        "--project", default=project, help=f"UbiOps project, required {project_note}"
    )
    where.add_argument(
        "--api-host",
        default=api_host,
        help=f"UbiOps API URL; the fallback is the pinned ubiops client's own {api_host_note}",
    )
    where.add_argument(
        "--deployment", default=d.deployment, help=f"deployment name {_default(d.deployment)}"
    )
    where.add_argument(
        "--version", default=d.version, help=f"deployment version name {_default(d.version)}"
    )
    where.add_argument(
        "--environment",
        default=d.environment,
        help=f"custom environment name {_default(d.environment)}",
    )

    size = parser.add_argument_group("instances")
    size.add_argument(
        "--instance-type",
        default=d.instance_type,
        help="instance type group; custom images need a '(Dedicated)' one "
        f"{_default(d.instance_type)}",
    )
    size.add_argument(
        "--instance-processes",
        type=int,
        default=d.instance_processes,
        help=f"requests at once {_default(d.instance_processes)}",
    )
    size.add_argument(
        "--min-instances",
        type=int,
        default=d.min_instances,
        help=f"instances kept running; 0 scales to zero when idle {_default(d.min_instances)}",
    )
    size.add_argument(
        "--max-instances",
        type=int,
        default=d.max_instances,
        help=f"most instances running at once {_default(d.max_instances)}",
    )
    size.add_argument(
        "--max-idle-time",
        type=int,
        default=d.max_idle_time,
        help=f"seconds before scale-down {_default(d.max_idle_time)}",
    )

    models = parser.add_argument_group("models")
    models.add_argument("--chat-models", default=chat, help=f"comma-separated {chat_note}")
    models.add_argument(
        "--embedding-models", default=embedding, help=f"comma-separated {embedding_note}"
    )
    models.add_argument(
        "--aliases", default=aliases, help=f"alias=model;alias2=model2 {aliases_note}"
    )

    image = parser.add_argument_group("environment image")
    source = image.add_mutually_exclusive_group()
    source.add_argument(
        "--image",
        type=Path,
        help="image archive to upload (`docker save`, `podman save --format docker-archive`) "
        "(default: none; the environment keeps its current image)",
    )
    source.add_argument(
        "--build",
        action="store_true",
        help="build the image from the Dockerfile with docker or podman, then save and upload it",
    )
    image.add_argument(
        "--engine",
        choices=("auto", *ENGINES),
        default=d.engine,
        help="with --build: auto uses docker when its daemon answers, else podman "
        f"{_default(d.engine)}",
    )
    image.add_argument(
        "--base-image",
        default=base_image,
        help=f"with --build: the UbiOps base image with the request agent, required there "
        f"{base_image_note}",
    )
    image.add_argument(
        "--image-output",
        type=Path,
        default=image_output,
        help=f"with --build: where the saved image archive is written {_default(image_output)}",
    )
    image.add_argument(
        "--bake-models",
        action="store_true",
        help="with --build: pull the configured models into the image",
    )
    image.add_argument(
        "--ca-bundle",
        type=Path,
        help="with --build: a PEM bundle trusted for HTTPS during the build only (build secret "
        "ca_bundle), for networks that inspect TLS; give a complete bundle, e.g. "
        f"/etc/ssl/certs/ca-certificates.crt {_default(None)}",
    )
    image.add_argument(
        "--build-arg",
        action="append",
        metavar="NAME=VALUE",
        help="with --build: another Dockerfile build argument, e.g. OLLAMA_URL=<mirror of the "
        f"release archive> or OLLAMA_GPU=true (repeatable) {_default(None)}",
    )

    access = parser.add_argument_group("direct access (the proxy then requires PROXY_API_KEY)")
    access.add_argument(
        "--port-forward",
        type=int,
        nargs="?",
        const=PROXY_PORT,
        metavar="PUBLIC_PORT",
        help=f"open PUBLIC_PORT on the instance to the proxy; --port-forward alone opens "
        f"{PROXY_PORT} {_default(None)}",
    )
    access.add_argument(
        "--service",
        nargs="?",
        const="",
        metavar="NAME",
        help="create a UbiOps Service (HTTPS, token auth) on the proxy port named NAME; "
        f"--service alone names it <deployment>-<version> {_default(None)}",
    )
    access.add_argument(
        "--show-api-key", action="store_true", help=f"print a newly generated {PROXY_API_KEY}"
    )
    access.add_argument(
        "--rotate-api-key", action="store_true", help=f"replace the stored {PROXY_API_KEY}"
    )

    run = parser.add_argument_group("run")
    run.add_argument("--dry-run", action="store_true", help="print the plan; call nothing")
    run.add_argument(
        "--delete",
        action="store_true",
        help="remove what this command created (service, version, deployment, and the "
        "environment when nothing else uses it) after a confirmation; says what it keeps and why",
    )
    run.add_argument("--yes", action="store_true", help="with --delete: do not ask")
    run.add_argument(
        "--package-dir",
        type=Path,
        default=package_dir,
        help=f"the deployment package directory, zipped and uploaded {_default(package_dir)}",
    )
    run.add_argument(
        "--timeout",
        type=int,
        default=d.timeout,
        help=f"seconds to wait for each build {_default(d.timeout)}",
    )
    return parser


def _options(ns: argparse.Namespace, env: Mapping[str, str]) -> Options:
    root = _project_root()
    service: str | None = ns.service
    if service == "":
        service = f"{ns.deployment}-{ns.version}"
    return Options(
        project=ns.project,
        deployment=ns.deployment,
        version=ns.version,
        environment=ns.environment,
        instance_type=ns.instance_type,
        instance_processes=ns.instance_processes,
        min_instances=ns.min_instances,
        max_instances=ns.max_instances,
        max_idle_time=ns.max_idle_time,
        chat_models=ns.chat_models,
        embedding_models=ns.embedding_models,
        aliases=ns.aliases,
        image=ns.image,
        build=ns.build,
        base_image=ns.base_image,
        bake_models=ns.bake_models,
        engine=ns.engine,
        ca_bundle=ns.ca_bundle,
        build_args=tuple(ns.build_arg or ()),
        port_forward=ns.port_forward,
        service=service,
        show_api_key=ns.show_api_key,
        rotate_api_key=ns.rotate_api_key,
        dry_run=ns.dry_run,
        delete=ns.delete,
        yes=ns.yes,
        api_host=ns.api_host.rstrip("/"),
        package_dir=ns.package_dir,
        context=root,
        image_output=ns.image_output,
        timeout=ns.timeout,
    )


def _project_root() -> Path:
    """The checkout holding the Dockerfile (when run from one), else the working directory."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "Dockerfile").is_file() else Path.cwd()


def _default_package_dir() -> Path:
    return _project_root() / "deployment_package"
