"""Waiting for UbiOps builds, and reporting a failed one with the tail of its log.

An environment image and a deployment package are both built by UbiOps after the upload. Both
are waited for the same way (:func:`wait_for_build`): the client's own waiter first (it shows
progress and raises ``StatusError`` on failure), then the build's status is read back, because
the waiter also returns when it merely stops waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from proxy.deploy.errors import DeployError
from proxy.deploy.session import FAILED, SUCCESS, Session

__all__ = ["Build", "wait_for_build"]

_LOG_TAIL = 20
_LOG_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class Build:
    """One build to wait for.

    Attributes:
        what: how messages name it (``environment image ollama-env:img-…``).
        wait: the client's waiter for it (``ubiops.utils.wait_for_…``), called with no argument.
        status: reads the build's status back: ``(status, error message)``, or ``None`` when
            there is nothing to check.
        log_query: the logs query that selects its build log.
    """

    what: str
    wait: Callable[[], object]
    status: Callable[[], tuple[str, str | None] | None]
    log_query: str


def wait_for_build(session: Session, build: Build) -> None:
    """Wait until ``build`` succeeded.

    Raises:
        DeployError: it failed (with the tail of its log as detail), it is still going after the
            waiter gave up, or an API call failed.
    """
    try:
        with session.errors(f"wait for the {build.what}"):
            build.wait()
    except session.status_error as exc:
        _raise_failure(session, build, exc)
    found = build.status()
    if found is None:
        return
    status, error = found
    if status in SUCCESS:
        return
    if status in FAILED:
        _raise_failure(session, build, error or status)
    raise DeployError(
        f"{build.what} did not finish building (status {status}); run the command again to "
        "keep waiting"
    )


def _raise_failure(session: Session, build: Build, reason: object) -> NoReturn:
    tail = _log_tail(session, build.log_query)
    detail = [f"--- last {len(tail)} build log lines ---", *tail] if tail else []
    text = str(reason).strip()
    message = text.splitlines()[-1] if text else "failed"
    raise DeployError(f"build of {build.what} failed: {message}", detail)


def _log_tail(session: Session, query: str) -> list[str]:
    try:
        logs = session.api.logs_list(session.plan.project, query=query, limit=_LOG_LIMIT)
    except session.ubiops.ApiException:
        return []
    lines = [str(entry.log).rstrip("\n") for entry in logs or () if entry.log]
    return lines[-_LOG_TAIL:]
