"""Deploy the proxy to UbiOps in one idempotent command: ``python -m proxy.deploy``.

What the multi-model tutorial does by hand (environment, image, deployment, version, environment
variables, deployment package, waiting for the builds) becomes one command that computes the
desired state from its arguments (:mod:`proxy.deploy.plan`, pure), then creates what is missing
and updates what differs (:mod:`proxy.deploy.apply`, with :mod:`~proxy.deploy.environment`,
:mod:`~proxy.deploy.variables`, :mod:`~proxy.deploy.service` and :mod:`~proxy.deploy.builds`).
A second run with the same arguments changes nothing and says so; ``--delete`` removes what it
created (:mod:`proxy.deploy.remove`). ``scripts/deploy.sh`` is the shell entry point.

The ``ubiops`` client is an optional dependency (the ``deploy`` extra); it is imported only when
the command talks to the API, so ``--dry-run`` and ``--help`` work without it.
"""

from __future__ import annotations

from proxy.deploy.cli import main
from proxy.deploy.errors import DeployError

__all__ = ["DeployError", "main"]
