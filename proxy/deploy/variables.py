"""The version's environment variables: the plan's plain ones, and ``PROXY_API_KEY`` as a secret.

Only the version's own variables are compared (inherited project or deployment variables are
left alone). An empty desired value deletes the variable. The API key is generated once and
kept: UbiOps does not return secret values, so an existing secret is never rewritten unless
``--rotate-api-key`` asks for it; a plain (non-secret) key is turned into a secret.
"""

from __future__ import annotations

import secrets
from typing import Any

from proxy.deploy.plan import PROXY_API_KEY
from proxy.deploy.session import Session

__all__ = ["ensure_variables"]

_OWN_VARIABLE = frozenset({"", "version", "deployment_version"})


def ensure_variables(session: Session) -> bool:
    """Bring the version's variables to the plan; return whether anything changed.

    A newly generated key is left in ``session.outcome.api_key``.
    """
    plan = session.plan
    with session.errors("list environment variables"):
        listed = session.api.deployment_version_environment_variables_list(
            plan.project, plan.deployment, plan.version
        )
    own = {v.name: v for v in listed or () if (v.inheritance_type or "") in _OWN_VARIABLE}
    changed = False
    for name, value in plan.plain_env.items():
        changed |= _ensure(session, own.get(name), name, value, secret=False)
    key = own.get(PROXY_API_KEY)
    if key is None or plan.options.rotate_api_key:
        session.outcome.api_key = secrets.token_urlsafe(32)
        changed |= _ensure(session, key, PROXY_API_KEY, session.outcome.api_key, secret=True)
    elif not key.secret:
        value = str(key.value or "") or secrets.token_urlsafe(32)
        changed |= _ensure(session, key, PROXY_API_KEY, value, secret=True)
    else:
        session.same(f"environment variable {PROXY_API_KEY} (secret)")
    return changed


def _ensure(session: Session, current: Any, name: str, value: str, *, secret: bool) -> bool:
    plan = session.plan
    api = session.api
    scope = (plan.project, plan.deployment)
    label = f"environment variable {name}" + (" (secret)" if secret else "")
    if current is not None and not value:
        with session.errors(f"delete {label}"):
            api.deployment_version_environment_variables_delete(*scope, current.id, plan.version)
        session.changed(f"deleted: {label}")
        return True
    if current is None and not value:
        return False
    data = session.ubiops.EnvironmentVariableCreate(name=name, value=value, secret=secret)
    if current is None:
        with session.errors(f"create {label}"):
            api.deployment_version_environment_variables_create(*scope, plan.version, data)
        session.changed(f"created: {label}")
        return True
    if secret or bool(current.secret) != secret or current.value != value:
        with session.errors(f"update {label}"):
            api.deployment_version_environment_variables_update(
                *scope, current.id, plan.version, data
            )
        session.changed(f"updated: {label}")
        return True
    session.same(label)
    return False
