"""``python -m proxy.deploy``: see :mod:`proxy.deploy.cli`."""

from __future__ import annotations

from proxy.deploy.cli import main

raise SystemExit(main())
