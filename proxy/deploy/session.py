"""One run's link to the UbiOps API: the client, the calls' error handling, the progress lines.

Every step of :mod:`proxy.deploy.apply` works through a :class:`Session`: :meth:`Session.get`
reads an object (``None`` when it does not exist), :meth:`Session.errors` turns any API failure
into a one-line :class:`DeployError`, and :meth:`Session.changed` / :meth:`Session.same` print
what was done and record it in the :class:`Outcome`. Nothing printed or raised contains the
UbiOps token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from proxy.deploy.errors import DeployError
from proxy.deploy.plan import Plan
from proxy.deploy.token import authorization_header

__all__ = ["FAILED", "SUCCESS", "Outcome", "Session", "connect", "cursor_of"]

SUCCESS = frozenset({"available", "completed", "confirmation", "success"})
"""Build and object statuses that mean done."""
FAILED = frozenset({"failed", "cancelled"})
"""Build statuses that mean it will not get done."""
_MESSAGE_CHARS = 300


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


class Session:
    """The API client of one run, with the plan it works for.

    ``api`` is a ``ubiops.CoreApi``; progress lines go to ``out`` (stdout by default).
    """

    def __init__(self, plan: Plan, api: Any, *, out: Callable[[str], None] = print) -> None:
        import ubiops
        from ubiops.utils.exceptions import StatusError

        self.plan = plan
        self.api = api
        self.ubiops = ubiops
        self.status_error: type[Exception] = StatusError
        self.out = out
        self.outcome = Outcome()

    def get(self, what: str, method: Callable[..., Any], *args: Any) -> Any:
        """Call a ``*_get`` method; ``None`` when the object does not exist (404)."""
        with self.errors(what):
            try:
                return method(*args)
            except self.ubiops.ApiException as exc:
                if exc.status == 404:
                    return None
                raise

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Turn an API exception raised inside into a one-line :class:`DeployError`."""
        try:
            yield
        except self.ubiops.ApiException as exc:
            raise DeployError(_api_message(what, exc, self.plan)) from None

    def changed(self, line: str) -> None:
        """Report a change (``created: …``, ``updated: …``) and record it."""
        self.outcome.changes.append(line)
        self.out(line)

    def same(self, what: str) -> None:
        """Report an object that needed no change."""
        self.out(f"up to date: {what}")


def cursor_of(next_url: object) -> str | None:
    """The ``cursor`` query parameter of a paginated response's ``next`` link."""
    if not next_url:
        return None
    values = parse_qs(urlsplit(str(next_url)).query).get("cursor")
    return values[0] if values else None


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
