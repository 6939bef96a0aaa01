"""The UbiOps Service in front of the proxy port (``--service``): managed HTTPS, token auth."""

from __future__ import annotations

from proxy.deploy.plan import LABEL_MANAGED_BY, MANAGED_BY
from proxy.deploy.session import Session

__all__ = ["ensure_service"]


def ensure_service(session: Session) -> None:
    """Create or update the Service in front of the proxy port; keep its URL in the outcome."""
    plan = session.plan
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
    current = session.get("get service", session.api.services_get, plan.project, spec.name)
    if current is None:
        data = session.ubiops.ServiceCreate(
            name=spec.name,
            description=f"proxy of {plan.deployment}/{plan.version}",
            labels={LABEL_MANAGED_BY: MANAGED_BY},
            **desired,
        )
        with session.errors("create service"):
            current = session.api.services_create(plan.project, data)
        session.changed(f"created: service {spec.name}")
    else:
        changes = {k: v for k, v in desired.items() if getattr(current, k) != v}
        if changes:
            with session.errors("update service"):
                current = session.api.services_update(
                    plan.project, spec.name, session.ubiops.ServiceUpdate(**changes)
                )
            session.changed(f"updated: service {spec.name} ({', '.join(sorted(changes))})")
        else:
            session.same(f"service {spec.name}")
    endpoint = getattr(current, "endpoint", None)
    session.outcome.service_url = str(endpoint or f"https://{current.id}.services.ubiops.com")
