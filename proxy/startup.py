"""How a request process meets a proxy that is still starting.

UbiOps builds the ``Deployment`` object when an instance starts *and* when it validates a new
version ("checking if initialisation of the deployment class succeeds"), and a process takes
requests as soon as its ``__init__`` returns. So ``__init__`` waits only while the wait is short
(:func:`wait_started`): until the proxy serves, or models are being downloaded, or
:data:`STARTUP_WAIT` passed. Until the proxy was seen serving, every request asks first
(:func:`require_serving`) and fails at once, saying the model server is starting and why (a
model being pulled, with its progress), instead of waiting out the platform's request timeout.

Both read the proxy's ``/readyz`` through a ``probe`` the caller gives: the readiness document,
or one of :data:`PROBE_ERRORS` while the proxy does not answer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import aiohttp

from proxy.state import NotServingError, Phase, Readiness, wait_until_serving
from proxy.ubiops_request import ProxyUnavailableError

__all__ = [
    "DOWNLOAD_GRACE",
    "PROBE_ERRORS",
    "STARTUP_WAIT",
    "Probe",
    "require_serving",
    "wait_started",
]

Probe = Callable[[], Awaitable[Readiness]]

STARTUP_WAIT = 120.0
"""At most how long :func:`wait_started` waits (and READY_TIMEOUT when shorter): far below
UbiOps' default request timeout of 300 s, which includes the cold start."""
DOWNLOAD_GRACE = 10.0
"""How long :func:`wait_started` keeps waiting once a model is being downloaded: a short pull is
waited for, a long one is not."""
PROBE_ERRORS = (aiohttp.ClientError, TimeoutError, ValueError)
"""What a probe raises while the proxy does not answer, or not with a readiness document."""

_DOWNLOADING = "pulling"


async def wait_started(probe: Probe, within: float) -> tuple[bool, str]:
    """Poll until the proxy serves, models have been downloading for :data:`DOWNLOAD_GRACE`,
    or ``within`` seconds passed; return whether it serves and how it ended, for the log.

    Raises:
        ProxyUnavailableError: Ollama failed for good.
    """
    downloading_since: float | None = None

    async def watched() -> Readiness:
        nonlocal downloading_since
        readiness = await probe()
        if readiness.serving or not _downloading(readiness):
            downloading_since = None
        elif downloading_since is None:
            downloading_since = time.monotonic()
        elif time.monotonic() - downloading_since >= DOWNLOAD_GRACE:
            raise _Downloading(readiness)
        return readiness

    try:
        await wait_until_serving(watched, within=within, unreachable=PROBE_ERRORS)
    except _Downloading as downloading:
        return False, f"models are being downloaded: {downloading.readiness.summary()}"
    except NotServingError as exc:
        if exc.gave_up:
            raise ProxyUnavailableError(
                f"The model server cannot start: {exc.last}. See the deployment logs."
            ) from None
        return False, f"not serving after {within:g} s: {exc.last}"
    return True, "serving"


async def require_serving(probe: Probe) -> None:
    """Return if the proxy serves; otherwise fail at once, saying why.

    Raises:
        ProxyUnavailableError: not serving, with the reason and when to retry.
    """
    try:
        readiness = await probe()
    except PROBE_ERRORS:
        raise ProxyUnavailableError(
            "The model server is starting and does not answer yet; retry in a few seconds."
        ) from None
    except Exception as exc:  # the probe's check says the proxy will not run
        raise ProxyUnavailableError(
            f"The model server cannot start: {exc}. See the deployment logs."
        ) from None
    if readiness.serving:
        return
    if readiness.gave_up:
        raise ProxyUnavailableError(
            f"The model server cannot start: {readiness.reason or readiness.phase}. "
            "See the deployment logs."
        )
    reason = f"{readiness.phase}: {readiness.reason}" if readiness.reason else readiness.phase
    if readiness.phase not in (Phase.STARTING, Phase.PULLING):
        raise ProxyUnavailableError(
            f"The model server does not serve ({reason}). See the deployment logs."
        )
    when = "in a minute (models are being downloaded)" if _downloading(readiness) else "shortly"
    raise ProxyUnavailableError(f"The model server is starting ({reason}); retry {when}.")


class _Downloading(Exception):
    """Ends :func:`wait_started`: a model is being downloaded."""

    def __init__(self, readiness: Readiness) -> None:
        super().__init__(readiness.summary())
        self.readiness = readiness


def _downloading(readiness: Readiness) -> bool:
    """Whether a model is being pulled, per the readiness document's model states."""
    models = readiness.details.get("models")
    if not isinstance(models, dict):
        return False
    return any(isinstance(m, dict) and m.get("state") == _DOWNLOADING for m in models.values())
