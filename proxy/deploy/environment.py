"""The environment and its image: a tag per image ID, uploaded and built once.

The image archive comes from ``--image`` or ``--build`` (built before anything in the project
changes, so a failing build leaves it untouched). It is uploaded to the environment tag
``img-<16 hex of the image ID>``, so a second run with the same image finds the tag built and
uploads nothing. Without a new image the version keeps the tag it uses, or the environment's
newest built tag that supports the request format.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from proxy.deploy.builds import Build, wait_for_build
from proxy.deploy.errors import DeployError
from proxy.deploy.package import build_image, image_identity
from proxy.deploy.plan import ENVIRONMENT_DESCRIPTION, LABEL_MANAGED_BY, MANAGED_BY
from proxy.deploy.session import SUCCESS, Session

__all__ = ["ensure_image"]

_TAG_PREFIX = "img-"
_TAG_HEX = 16


def ensure_image(session: Session, version: Any) -> str:
    """Make sure the environment exists with a built image; return the tag the version uses.

    ``version`` is the version as it is before this run (None when it does not exist yet).

    Raises:
        DeployError: no image to create the environment with, the build failed, or an API
            call failed.
    """
    archive = _image_archive(session)
    _ensure_environment(session, archive)
    return _upload_image(session, version, archive)


def _image_archive(session: Session) -> Path | None:
    """The image archive to upload: ``--image``, or what ``--build`` produced (before any
    change is made in the project, so a failing build leaves it untouched)."""
    if session.plan.build is not None:
        return build_image(session.plan.build)
    return session.plan.options.image


def _ensure_environment(session: Session, archive: Path | None) -> None:
    plan = session.plan
    current = session.get(
        "get environment", session.api.environments_get, plan.project, plan.environment
    )
    if current is not None:
        session.same(f"environment {plan.environment}")
        return
    if archive is None:
        raise DeployError(
            f"environment {plan.environment!r} does not exist: pass --image <docker save "
            "archive> or --build to create it"
        )
    data = session.ubiops.EnvironmentCreate(
        name=plan.environment,
        description=ENVIRONMENT_DESCRIPTION,
        labels={LABEL_MANAGED_BY: MANAGED_BY},
    )
    with session.errors("create environment"):
        session.api.environments_create(plan.project, data)
    session.changed(f"created: environment {plan.environment}")


def _upload_image(session: Session, version: Any, archive: Path | None) -> str:
    """Return the environment tag the version should use, uploading the image if new."""
    plan = session.plan
    if archive is None:
        return _current_tag(session, version)
    tag = _TAG_PREFIX + image_identity(archive)[:_TAG_HEX]
    label = f"environment image {plan.environment}:{tag}"
    current = session.get(
        "get environment tag",
        session.api.environment_tags_get,
        plan.project,
        plan.environment,
        tag,
    )
    if current is not None and current.status in SUCCESS:
        if current.supports_request_format is False:
            raise DeployError(
                f"{label} is built without supports_request_format, and turning the flag on "
                "afterwards does not add UbiOps' request agent to a built image: delete tag "
                f"{tag} of environment {plan.environment!r} in UbiOps (or pass another "
                "--environment), then run again to upload the image with the flag on"
            )
        session.same(label)
        return tag
    if current is None:
        data = session.ubiops.EnvironmentTagCreate(name=tag, supports_request_format=True)
        with session.errors("create environment tag"):
            session.api.environment_tags_create(plan.project, plan.environment, data)
    session.out(f"uploading {archive} to {label} ...")
    with session.errors("upload the environment image"):
        session.api.environment_tags_build(
            plan.project,
            plan.environment,
            tag,
            file=str(archive),
            _progress_bar=sys.stderr.isatty(),
        )
    session.changed(f"uploaded: {label}")
    _wait_for_environment(session, tag)
    return tag


def _current_tag(session: Session, version: Any) -> str:
    plan = session.plan
    same_environment = version is not None and version.environment_name == plan.environment
    if same_environment and version.environment_tag:
        return str(version.environment_tag)
    with session.errors("list environment tags"):
        tags = session.api.environment_tags_list(plan.project, plan.environment)
    built = [t for t in tags or () if t.status in SUCCESS and t.supports_request_format]
    if not built:
        raise DeployError(
            f"environment {plan.environment!r} has no built image that supports the "
            "request format: pass --image or --build"
        )
    return str(max(built, key=lambda t: str(t.creation_date or "")).name)


def _wait_for_environment(session: Session, tag: str) -> None:
    plan = session.plan

    def status() -> tuple[str, str | None]:
        current = session.get(
            "get environment tag",
            session.api.environment_tags_get,
            plan.project,
            plan.environment,
            tag,
        )
        return (str(current.status), current.error_message) if current else ("missing", None)

    wait_for_build(
        session,
        Build(
            what=f"environment image {plan.environment}:{tag}",
            wait=lambda: session.ubiops.utils.wait_for_environment(
                session.api.api_client,
                plan.project,
                plan.environment,
                tag_name=tag,
                timeout=plan.options.timeout,
            ),
            status=status,
            log_query=f"| environment_name=`{plan.environment}` and environment_tag=`{tag}`",
        ),
    )
